//! The man page and shell completions are generated from the clap definition; this test fails
//! when the committed copies differ. Regenerate with:
//!
//!     PGTMP_REGENERATE=1 cargo test --test suite generated::

use clap::CommandFactory;
use clap_complete::Shell;
use pgtmp::cli::{Cli, EXTRA_SECTIONS, SEE_ALSO};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Escapes text for roff: backslashes, hyphens (so they copy as ASCII), and lines that would
/// otherwise be read as requests.
fn roff_escape(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e").replace('-', "\\-");
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(
    man: &clap_mangen::Man,
    part: fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> String {
    let mut out = Vec::new();
    part(man, &mut out).expect("rendering into memory cannot fail");
    String::from_utf8(out).expect("roff is UTF-8")
}

/// A synopsis that names each option's value (clap_mangen's leaves it out): `[-p|--port PORT]`,
/// `[-o|--options OPTIONS]...`, `<URL>`, `<CMD>...`, then `[COMMAND]` for the subcommands.
fn synopsis(cmd: &clap::Command, bin: &str) -> String {
    let bold = |text: &str| format!("\\fB{}\\fR", text.replace('-', "\\-"));
    let italic = |text: &str| format!("\\fI{text}\\fR");
    let value = |arg: &clap::Arg| {
        let name = arg
            .get_value_names()
            .and_then(|n| n.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string());
        italic(&name)
    };
    let many = |arg: &clap::Arg| {
        arg.get_num_args().is_some_and(|n| n.max_values() > 1)
            || matches!(arg.get_action(), clap::ArgAction::Append)
    };
    let mut words = vec![bold(bin)];
    for arg in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
    {
        let mut names = Vec::new();
        if let Some(short) = arg.get_short() {
            names.push(bold(&format!("-{short}")));
        }
        if let Some(long) = arg.get_long() {
            names.push(bold(&format!("--{long}")));
        }
        let mut word = names.join("|");
        if arg.get_action().takes_values() {
            word = format!("{word} {}", value(arg));
        }
        let word = if arg.is_required_set() {
            word
        } else {
            format!("[{word}]")
        };
        words.push(if many(arg) {
            format!("{word}...")
        } else {
            word
        });
    }
    for arg in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let word = if arg.is_required_set() {
            format!("<{}>", value(arg))
        } else {
            format!("[{}]", value(arg))
        };
        words.push(if many(arg) {
            format!("{word}...")
        } else {
            word
        });
    }
    if cmd.has_subcommands() {
        words.push(format!("[{}]", italic("COMMAND")));
    }
    format!("{}\n", words.join(" "))
}

/// A subcommand's examples (its `--help` ends with them), unindented, lines kept.
fn examples(sub: &clap::Command) -> String {
    let Some(help) = sub.get_after_help() else {
        return String::new();
    };
    let text = help.to_string();
    let body: Vec<&str> = text
        .strip_prefix("Examples:\n")
        .unwrap_or(&text)
        .lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect();
    format!(
        ".SS Examples\n.nf\n{}\n.fi\n",
        roff_escape(&body.join("\n"))
    )
}

/// One page: the main command, then each subcommand's synopsis and options, then the
/// hand-written sections shared with `--help`.
fn man_page() -> String {
    let mut cmd = Cli::command();
    // Global options (--bindir, --run-as) then show in each subcommand's synopsis too.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .date("")
        .manual("pgtmp manual");
    let mut page = String::new();
    page += &render(&man, clap_mangen::Man::render_title);
    page += &render(&man, clap_mangen::Man::render_name_section);
    page += ".SH SYNOPSIS\n";
    page += &synopsis(&cmd, "pgtmp");
    page += &render(&man, clap_mangen::Man::render_description_section);
    page += &render(&man, clap_mangen::Man::render_options_section);
    // `pgtmp help [SUB]` prints the pages this one holds.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let sub_man =
            clap_mangen::Man::new(sub.clone().bin_name(format!("pgtmp {}", sub.get_name())));
        page += &format!(".SH \"PGTMP {}\"\n", sub.get_name().to_uppercase());
        page += &synopsis(sub, &format!("pgtmp {}", sub.get_name()));
        let aliases: Vec<String> = sub
            .get_visible_aliases()
            .map(|a| format!("\\fBpgtmp {a}\\fR"))
            .collect();
        if !aliases.is_empty() {
            page += &format!(".PP\nAlso: {}.\n", aliases.join(", "));
        }
        page += ".PP\n";
        page += &render(&sub_man, clap_mangen::Man::render_description_section).replacen(
            ".SH DESCRIPTION\n",
            "",
            1,
        );
        page += &render(&sub_man, clap_mangen::Man::render_options_section).replacen(
            ".SH OPTIONS\n",
            ".SS Options\n",
            1,
        );
        page += &examples(sub);
    }
    for (title, body) in EXTRA_SECTIONS {
        // Tables and examples keep their lines; a single paragraph is filled to the width.
        let (before, after) = if body.contains('\n') {
            (".nf", "\n.fi")
        } else {
            (".PP", "")
        };
        page += &format!(
            ".SH \"{}\"\n{before}\n{}{after}\n",
            title.to_uppercase(),
            roff_escape(body)
        );
    }
    let (pages, sentence) = SEE_ALSO;
    let named: Vec<String> = pages
        .iter()
        .map(|(name, section)| format!("\\fB{}\\fR({section})", roff_escape(name)))
        .collect();
    page += &format!(
        ".SH \"SEE ALSO\"\n{}\n.PP\n{}\n",
        named.join(", "),
        roff_escape(sentence)
    );
    page += &render(&man, clap_mangen::Man::render_version_section);
    page
}

fn completion(shell: Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "pgtmp", &mut out);
    String::from_utf8(out).expect("completions are UTF-8")
}

fn check(path: &Path, expected: &str) {
    if std::env::var_os("PGTMP_REGENERATE").is_some() {
        std::fs::write(path, expected)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == expected,
        "{} is out of date with the command line; run: PGTMP_REGENERATE=1 cargo test --test suite generated::",
        path.display()
    );
}

#[test]
fn man_page_matches_cli() {
    check(&root().join("man/pgtmp.1"), &man_page());
}

#[test]
fn completions_match_cli() {
    check(
        &root().join("completions/pgtmp.bash"),
        &completion(Shell::Bash),
    );
    check(&root().join("completions/_pgtmp"), &completion(Shell::Zsh));
    check(
        &root().join("completions/pgtmp.fish"),
        &completion(Shell::Fish),
    );
}
