//! `posrelay serve`: maps the resolved settings onto the relay server.

use crate::config::Settings;

/// Runs the relay until it is stopped.
pub fn run(_settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("serve is being built")
}
