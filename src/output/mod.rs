//! What pgtmp prints and how it ends: output formats, URLs, progress lines, traces and exit codes.

pub mod exit;
pub mod format;
pub mod progress;
pub mod stdout;
pub mod trace;
pub mod url;
