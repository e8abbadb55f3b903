use batchrpc::{Client, RequestCtx, Server};
use std::time::{Duration, Instant};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let window: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let workers: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2);
    let body = [b'x'; 261];
    let server = Server::builder()
        .workers(workers)
        .handler(move |_: &RequestCtx, _r: &[u8], w: &mut Vec<u8>| {
            w.extend_from_slice(&body);
            Ok(())
        })
        .bind("127.0.0.1:0")
        .unwrap();
    let addr = server.local_addr();
    let stop = Instant::now() + Duration::from_secs(3);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = Client::builder(addr).connect().unwrap();
                let mut n = 0u64;
                let mut q = std::collections::VecDeque::new();
                while Instant::now() < stop {
                    if window == 1 {
                        c.call(b"foobar").unwrap();
                        n += 1;
                        continue;
                    }
                    while q.len() < window {
                        q.push_back(c.call_async(b"foobar").unwrap());
                    }
                    for _ in 0..window / 2 {
                        q.pop_front().unwrap().wait().unwrap();
                        n += 1;
                    }
                }
                for p in q {
                    p.wait().unwrap();
                    n += 1;
                }
                (n, c.stats())
            })
        })
        .collect();
    let t0 = Instant::now();
    if std::env::var_os("MON").is_some() {
        for _ in 0..12 {
            std::thread::sleep(Duration::from_secs(1));
            let s = server.stats();
            eprintln!(
                "server calls {} frames_read {} frames_written {} reads {} writes {} open {}",
                s.calls,
                s.frames_read,
                s.frames_written,
                s.read_calls,
                s.write_calls,
                s.open_connections
            );
        }
    }
    let mut total = 0;
    let mut fw = 0.0;
    for h in hs {
        let (n, s) = h.join().unwrap();
        total += n;
        fw = s.frames_per_write();
    }
    let el = t0.elapsed().as_secs_f64();
    let ss = server.stats();
    println!("window {window} threads {threads} workers {workers}: {:.0} calls/s, {:.0} ns/call, client frames/write {fw:.1}, server frames/write {:.1}", total as f64/el, el*1e9/total as f64, ss.frames_per_write());
}
