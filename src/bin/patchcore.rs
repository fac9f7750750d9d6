//! The `patchcore` command-line tool.
fn main() {}
