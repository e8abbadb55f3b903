//! A small key-value service with typed calls: `Kv.get`, `Kv.set`, `Kv.delete` and `Kv.list`
//! over a struct value type, served by a `Dispatcher` and called through a `FuncClient`.
//!
//! Run with `cargo run --example typed`.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batchrpc::{Client, Dispatcher, Error, FuncClient, RequestCtx, Server};
use clap::Parser;
use serde::{Deserialize, Serialize};

mod support;

/// A small key-value service with typed calls (Kv.get, Kv.set, Kv.delete, Kv.list) over a
/// struct value type, served by a Dispatcher and called through a FuncClient.
#[derive(Parser)]
struct Args {}

/// The value type: what the service stores under each key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Item {
    title: String,
    tags: Vec<String>,
    price_cents: u64,
    /// Set by the server: seconds since the epoch of the last write.
    updated: u64,
    /// Set by the server: the connection that wrote it.
    writer: u64,
}

/// Arguments of `Kv.list`.
#[derive(Serialize, Deserialize, Debug)]
struct ListArgs {
    prefix: String,
    limit: usize,
}

/// The service's own error; its text reaches the caller as `Error::Server`.
#[derive(Debug)]
enum KvError {
    NotFound(String),
    Invalid(&'static str),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::NotFound(key) => write!(f, "no item under {key:?}"),
            KvError::Invalid(why) => write!(f, "invalid item: {why}"),
        }
    }
}

/// The service state, shared by its methods.
#[derive(Default)]
struct Store {
    items: Mutex<BTreeMap<String, Item>>,
}

impl Store {
    fn get(&self, key: String) -> Result<Item, KvError> {
        let items = self.items.lock().unwrap();
        items.get(&key).cloned().ok_or(KvError::NotFound(key))
    }

    /// Stores the item; returns the one it replaced, if any.
    fn set(
        &self,
        ctx: &RequestCtx,
        (key, mut item): (String, Item),
    ) -> Result<Option<Item>, KvError> {
        if item.title.is_empty() {
            return Err(KvError::Invalid("empty title"));
        }
        item.updated = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        item.writer = ctx.conn_id();
        Ok(self.items.lock().unwrap().insert(key, item))
    }

    fn delete(&self, key: String) -> Result<Item, KvError> {
        let mut items = self.items.lock().unwrap();
        items.remove(&key).ok_or(KvError::NotFound(key))
    }

    fn list(&self, args: ListArgs) -> Result<Vec<(String, Item)>, KvError> {
        let items = self.items.lock().unwrap();
        Ok(items
            .range(args.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&args.prefix))
            .take(args.limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn item(title: &str, tags: &[&str], price_cents: u64) -> Item {
    Item {
        title: title.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        price_cents,
        updated: 0,
        writer: 0,
    }
}

fn main() -> ExitCode {
    Args::parse();
    support::exit_code(run().map_err(Into::into))
}

fn run() -> Result<(), Error> {
    // Server: one dispatcher, one service, one handler.
    let store = Arc::new(Store::default());
    let mut d = Dispatcher::new();
    d.add_service("Kv", store.clone())
        .method("get", Store::get)
        .method_ctx("set", Store::set)
        .method("delete", Store::delete)
        .method("list", Store::list);
    let server = Server::builder()
        .handler(d.into_handler())
        .bind("127.0.0.1:0")?;
    println!("serving Kv on {}", server.local_addr());

    // Client: no registration, just names and types.
    let kv = FuncClient::new(Client::builder(server.local_addr()).connect()?);

    let old: Option<Item> = kv.call(
        "Kv.set",
        &("fruit/apple", item("Apple", &["red", "sweet"], 120)),
    )?;
    println!("set fruit/apple         -> replaced {old:?}");
    let old: Option<Item> = kv.call("Kv.set", &("fruit/apple", item("Apple", &["green"], 110)))?;
    println!(
        "set fruit/apple again   -> replaced {:?}",
        old.map(|i| i.tags)
    );

    // Many calls at once: one batch, one hand-off, answers in order.
    let mut batch = kv.batch();
    let mut sets = Vec::new();
    for (key, title, price) in [
        ("fruit/pear", "Pear", 90),
        ("fruit/plum", "Plum", 60),
        ("veg/leek", "Leek", 150),
    ] {
        sets.push(batch.add::<_, Option<Item>>("Kv.set", &(key, item(title, &[], price)))?);
    }
    let bad = batch.add::<_, Option<Item>>("Kv.set", &("fruit/none", item("", &[], 0)))?;
    let results = batch.call();
    let ok = sets.iter().filter(|&&s| results.get(s).is_ok()).count();
    println!("batch of {} sets         -> {ok} ok", results.len());
    println!(
        "set with an empty title -> {}",
        results.get(bad).unwrap_err()
    );

    let apple: Item = kv.call("Kv.get", "fruit/apple")?;
    println!(
        "get fruit/apple         -> {} ({} cents), written by connection {}",
        apple.title, apple.price_cents, apple.writer
    );

    let fruit: Vec<(String, Item)> = kv.call(
        "Kv.list",
        &ListArgs {
            prefix: "fruit/".into(),
            limit: 10,
        },
    )?;
    let keys: Vec<&str> = fruit.iter().map(|(k, _)| k.as_str()).collect();
    println!("list fruit/             -> {keys:?}");

    let gone: Item = kv.call("Kv.delete", "fruit/plum")?;
    println!("delete fruit/plum       -> {}", gone.title);

    // Errors: the service's own, unknown names, mismatched types, timeouts.
    match kv.call::<_, Item>("Kv.get", "fruit/plum") {
        Err(Error::Server(text)) => println!("get fruit/plum          -> server error: {text}"),
        other => println!("get fruit/plum          -> unexpected {other:?}"),
    }
    match kv.call::<_, Item>("Kv.fetch", "fruit/pear") {
        Err(Error::Server(text)) => println!("Kv.fetch                -> server error: {text}"),
        other => println!("Kv.fetch                -> unexpected {other:?}"),
    }
    match kv.call::<_, Item>("Kv.get", &42u32) {
        Err(Error::Server(text)) => println!("Kv.get(42u32)           -> server error: {text}"),
        other => println!("Kv.get(42u32)           -> unexpected {other:?}"),
    }
    let pending = kv.call_async_timeout::<_, Vec<(String, Item)>>(
        "Kv.list",
        &ListArgs {
            prefix: String::new(),
            limit: 100,
        },
        Duration::from_secs(1),
    )?;
    println!("list everything (async) -> {} items", pending.wait()?.len());

    assert_eq!(store.items.lock().unwrap().len(), 3);
    let c = kv.client().stats();
    println!();
    println!(
        "client: {} calls, {} server errors, {} bytes out, {} bytes in",
        c.calls, c.errors.server, c.bytes_written, c.bytes_read
    );
    drop(kv);
    server.shutdown();
    Ok(())
}
