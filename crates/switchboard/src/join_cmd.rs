//! `switchboard join`: a native participant from the terminal (chat, file transfer, media).

#[derive(clap::Args, Debug)]
pub struct JoinArgs {}

pub async fn run(_args: JoinArgs) -> anyhow::Result<()> {
    anyhow::bail!("`switchboard join` is not implemented yet")
}
