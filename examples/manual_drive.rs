//! One thread drives a reactor that hosts both a server and a client: no thread is spawned,
//! handlers run inline (`workers(0)`), and calls are polled between turns.
//!
//! ```text
//! cargo run --release --example manual_drive
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use batchrpc::{Client, Reactor, RequestCtx, Server};
use clap::Parser;

mod support;

/// One thread drives a reactor that hosts both a server and a client: no thread is spawned,
/// handlers run inline, and calls are polled between turns.
#[derive(Parser)]
struct Args {}

fn main() -> ExitCode {
    Args::parse();
    support::exit_code(run().map_err(Into::into))
}

fn run() -> Result<(), batchrpc::Error> {
    let mut reactor = Reactor::new()?;
    let server = Server::builder()
        .workers(0)
        .handler(|_ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            resp.extend(req.iter().rev());
            Ok(())
        })
        .bind_on(&mut reactor, "127.0.0.1:0")?;
    let client = Client::builder(server.local_addr()).connect_on(&mut reactor)?;

    let started = Instant::now();
    let mut pending: Vec<_> = (0..1000)
        .map(|i| client.call_async(format!("call-{i:04}").as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut turns = 0;
    while !pending.iter().all(|p| p.is_done()) {
        reactor.poll_once(Some(Duration::from_millis(10)))?;
        turns += 1;
    }
    let last = pending.pop().expect("1000 calls").wait()?;
    println!(
        "1000 calls answered in {turns} reactor turns, {:?}; the last one: {}",
        started.elapsed(),
        String::from_utf8_lossy(&last)
    );
    let s = client.stats();
    println!(
        "client: {} requests in {} writes; server: {} handled",
        s.frames_written,
        s.write_calls,
        server.stats().calls
    );

    // Shut down: the server drains on the next turns, the client closes when dropped.
    server.shutdown();
    drop(pending);
    drop(client);
    while !reactor.is_idle() {
        reactor.poll_once(Some(Duration::from_millis(10)))?;
    }
    println!("reactor idle: everything closed");
    Ok(())
}
