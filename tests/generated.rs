//! The man page and shell completions are generated from the clap definition; this test fails
//! when the committed copies differ. Regenerate with:
//!
//!     PGTMP_REGENERATE=1 cargo test --test generated

use clap::CommandFactory;
use clap_complete::Shell;
use pgtmp::cli::{Cli, EXTRA_SECTIONS};
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
    page += &render(&man, clap_mangen::Man::render_synopsis_section);
    page += &render(&man, clap_mangen::Man::render_description_section);
    page += &render(&man, clap_mangen::Man::render_options_section);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_man =
            clap_mangen::Man::new(sub.clone().bin_name(format!("pgtmp {}", sub.get_name())));
        page += &format!(".SH \"PGTMP {}\"\n", sub.get_name().to_uppercase());
        let mut synopsis = render(&sub_man, clap_mangen::Man::render_synopsis_section).replacen(
            ".SH SYNOPSIS\n",
            "",
            1,
        );
        // clap_mangen writes a positional that takes several values like one that takes one.
        for arg in sub.get_positionals() {
            if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                let name = arg
                    .get_value_names()
                    .and_then(|n| n.first())
                    .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string());
                let one = format!("<\\fI{name}\\fR>");
                synopsis = synopsis.replacen(&one, &format!("{one}..."), 1);
            }
        }
        page += &synopsis;
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
        "{} is out of date with the command line; run: PGTMP_REGENERATE=1 cargo test --test generated",
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
