//! `switchboard turn`: a standalone STUN/TURN server with coturn's flag names.

#[derive(clap::Args, Debug)]
pub struct TurnArgs {}

pub async fn run(_args: TurnArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
