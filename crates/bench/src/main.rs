//! `switchboard-bench`: the load generator, a binary of its own so that
//! the server (`switchboard`) links none of it.
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
//! it measures. Every scenario runs through the phases of [`driver`]
//! (connect, ready, measured window, drain, report) and reads its sockets
//! with its one read loop; what else the scenarios share is in [`common`].

use clap::{Parser, Subcommand};

mod chaos;
mod churn;
mod client;
mod common;
mod connect;
mod direct;
mod driver;
mod duration;
mod fanout;
mod presence;
mod publish;
mod resume;
mod socketio;
mod sse;
mod wire;

#[derive(Parser)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Load generator: measure a running Switchboard server (or a baseline)"
)]
struct Args {
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
    /// Connect: N idle connections opened and held (by several processes
    /// past ~15 000). Measures the connect rate, handshake latency and the
    /// server's RSS per connection.
    Connect(connect::ConnectArgs),
    /// Direct: N pairs of users sending each other direct messages, flat
    /// out (window of un-acked sends) or at a rate. Measures deliveries per
    /// second, end-to-end latency, lost and duplicated directs.
    Direct(direct::DirectArgs),
    /// Resume storm: N clients in R rooms disconnect, miss messages, then
    /// all reconnect at once and join with `since`. Measures the time until
    /// every replay is complete and per-client resume latency; counts
    /// missing and duplicated messages.
    Resume(resume::ResumeArgs),
    /// Churn: short sessions (connect, join, publish one message, close)
    /// started at a fixed rate. Measures completed sessions per second,
    /// failures by kind and the latency of each step.
    Churn(churn::ChurnArgs),
    /// Chaos: randomized clients (random and malformed commands, abrupt
    /// disconnects and resumes, resends, slow readers; with --jwt-secret,
    /// tokens renewed or left to expire) with the protocol's invariants
    /// checked throughout and a well-behaved bystander timed.
    Chaos(chaos::ChaosArgs),
    /// Presence: N users join one room, spread over a time window. Measures
    /// the presence frames (and bytes) each member receives until the storm
    /// is over, against the n(n-1)/2 of one frame per join per member.
    Presence(presence::PresenceArgs),
}

fn main() -> anyhow::Result<()> {
    match Args::parse().scenario {
        Scenario::Fanout(args) => fanout::run(args),
        Scenario::Publish(args) => publish::run(args),
        Scenario::Connect(args) => connect::run(args),
        Scenario::Direct(args) => direct::run(args),
        Scenario::Resume(args) => resume::run(args),
        Scenario::Churn(args) => churn::run(args),
        Scenario::Chaos(args) => chaos::run(args),
        Scenario::Presence(args) => presence::run(args),
    }
}
