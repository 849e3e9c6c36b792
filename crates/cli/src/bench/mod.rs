//! `switchboard bench`: the load generator.
//!
//! One subcommand per scenario, each in its own module. Each drives any
//! WebSocket server reachable at `--url`: Switchboard itself, or a baseline
//! such as `bench/baselines/node-ws-broadcast.js`. A scenario prints a
//! progress line per second on stderr, then a human summary and one JSON line
//! on stdout (the JSON line also goes to `--json FILE`).
//!
//! The client side is deliberately tiny (module [`wire`]): a hand-rolled
//! RFC 6455 client on a bare `TcpStream` that parses frame headers and the
//! few fields a scenario needs and nothing else, so that on a small machine
//! the load generator takes as little CPU as possible away from the server
//! it measures. What the scenarios share beyond that is in [`common`].

use clap::Subcommand;

mod common;
mod fanout;
mod publish;
mod wire;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fan-out: N subscribers in one room (or relay channel) and P publishers.
    /// Measures deliveries per second and end-to-end latency.
    Fanout(fanout::FanoutArgs),
    /// Publish: N publishers, each keeping up to W publishes un-acked, no
    /// subscribers. Measures acked publishes per second and ack latency:
    /// what the write pipeline (and its store) sustains.
    Publish(publish::PublishArgs),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Publish(args) => publish::run(args),
    }
}
