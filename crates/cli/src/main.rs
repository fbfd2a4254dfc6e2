//! `erofs-share`: one binary, one subcommand per task.

fn main() -> anyhow::Result<()> {
    Ok(())
}
