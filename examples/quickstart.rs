//! Starts a server and a client in one process, makes blocking, asynchronous, batched and
//! fire-and-forget calls, and prints the answers and the statistics that show the batching.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchrpc::{Client, RequestCtx, Server};
use clap::Parser;

mod support;

/// Starts a server and a client in one process, makes blocking, asynchronous, batched and
/// fire-and-forget calls, and prints the answers and the statistics that show the batching.
#[derive(Parser)]
struct Args {}

fn main() -> ExitCode {
    Args::parse();
    support::exit_code(run().map_err(Into::into))
}

fn run() -> Result<(), batchrpc::Error> {
    let notes = Arc::new(AtomicU64::new(0));
    let seen = notes.clone();
    let server = Server::builder()
        .handler(move |_ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            if req.starts_with(b"note:") {
                seen.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if req == b"fail" {
                return Err("you asked for it".into());
            }
            resp.extend_from_slice(b"echo:");
            resp.extend_from_slice(req);
            Ok(())
        })
        .bind("127.0.0.1:0")?;
    println!("server listening on {}", server.local_addr());

    let client = Client::builder(server.local_addr()).connect()?;

    let resp = client.call(b"hello")?;
    println!(
        "call(hello)            -> {}",
        String::from_utf8_lossy(&resp)
    );

    match client.call(b"fail") {
        Err(e) => println!("call(fail)             -> error: {}", support::Chain(&e)),
        Ok(r) => println!("call(fail)             -> unexpected {r:?}"),
    }

    let pending: Vec<_> = (0..3)
        .map(|i| client.call_async(format!("async-{i}").as_bytes()))
        .collect::<Result<_, _>>()?;
    for p in pending {
        println!(
            "call_async             -> {}",
            String::from_utf8_lossy(&p.wait()?)
        );
    }

    for i in 0..5 {
        client.send(format!("note:{i}").as_bytes())?;
    }
    let mut batch = client.batch();
    for i in 0..4 {
        batch.add(format!("batch-{i}").as_bytes())?;
    }
    let answers: Vec<String> = batch
        .call()
        .into_iter()
        .map(|r| r.map(|r| String::from_utf8_lossy(&r).into_owned()))
        .collect::<Result<_, _>>()?;
    println!("batch                  -> {answers:?}");

    // Many calls in flight at once: they share writes.
    let started = Instant::now();
    let window: Vec<_> = (0..1000)
        .map(|_| client.call_async(b"x"))
        .collect::<Result<_, _>>()?;
    for p in window {
        p.wait()?;
    }
    println!("1000 calls in flight   -> done in {:?}", started.elapsed());

    let deadline = Instant::now() + Duration::from_secs(2);
    while notes.load(Ordering::Relaxed) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "fire-and-forget notes handled by the server: {}",
        notes.load(Ordering::Relaxed)
    );

    let c = client.stats();
    let s = server.stats();
    println!();
    println!(
        "client: {} calls, {} errors (server: {}), avg call {:?}",
        c.calls,
        c.errors.server + c.errors.timeout,
        c.errors.server,
        c.avg_call_time()
    );
    println!(
        "client: {} requests in {} writes ({:.1} per write), {} bytes out, {} reads",
        c.frames_written,
        c.write_calls,
        c.frames_written as f64 / c.write_calls.max(1) as f64,
        c.bytes_written,
        c.read_calls
    );
    println!(
        "server: {} requests handled, {} responses in {} writes ({:.1} per write)",
        s.calls,
        s.frames_written,
        s.write_calls,
        s.frames_written as f64 / s.write_calls.max(1) as f64
    );
    println!(
        "thread wake-ups: client {} and server {} for {} calls, in {} and {} reactor turns",
        c.wakeups, s.wakeups, c.calls, c.turns, s.turns
    );

    drop(client);
    server.shutdown();
    println!("server shut down cleanly");
    Ok(())
}
