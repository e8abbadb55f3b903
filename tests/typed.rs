//! The typed layer over real loopback sockets: round trips of every kind of serde value,
//! every error case with its exact variant and text, services and the request context, every
//! call style, batches, concurrency, and allocations per call (counted per thread by a global
//! allocator, so that tests running in parallel do not disturb each other).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::{self, Debug};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batchrpc::typed::{codec, FuncBatchResults};
use batchrpc::{Client, Dispatcher, Error, FuncClient, RequestCtx, Server};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use support::{run, wait_until, Gate, OpenOnDrop};

const WAIT: Duration = Duration::from_secs(10);

// ----- a per-thread counting allocator -------------------------------------------------------

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count_alloc() {
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations made by this thread so far.
fn thread_allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts, in a
// const-initialized thread-local without destructor (which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ----- types and functions --------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Address {
    street: String,
    zip: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Empty,
    Circle(f64),
    Rect { w: u32, h: u32 },
    Pair(i8, i8),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Person {
    name: String,
    age: u8,
    emails: Vec<String>,
    address: Option<Address>,
    scores: BTreeMap<String, i64>,
    shape: Shape,
    unit: (),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Unit;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Newtype(u64);

/// A value whose serialization always fails.
#[derive(Deserialize, Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not today"))
    }
}

/// An error type of the functions' own.
#[derive(Debug)]
struct NotFound(String);

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no such key: {}", self.0)
    }
}

/// Registers `name` as the identity function of `T`.
fn echo<T>(d: &mut Dispatcher, name: &str)
where
    T: Serialize + DeserializeOwned + 'static,
{
    d.add_func(name, |x: T| Ok::<T, Infallible>(x));
}

/// The functions most tests call.
fn dispatcher() -> Dispatcher {
    let mut d = Dispatcher::new();
    d.add_func("add", |(a, b): (i64, i64)| -> Result<i64, String> {
        Ok(a + b)
    });
    d.add_func("div", |(a, b): (i64, i64)| {
        a.checked_div(b)
            .ok_or_else(|| format!("cannot divide {a} by {b}"))
    });
    d.add_func("lookup", |key: String| -> Result<u32, NotFound> {
        Err(NotFound(key))
    });
    d.add_func("boom", |(): ()| -> Result<(), String> { panic!("boom") });
    d.add_func("bad_result", |(): ()| Ok::<_, String>(Unencodable));
    d.add_func("len", |s: String| Ok::<_, String>(s.len() as u64));
    echo::<bool>(&mut d, "echo_bool");
    echo::<u8>(&mut d, "echo_u8");
    echo::<i8>(&mut d, "echo_i8");
    echo::<u16>(&mut d, "echo_u16");
    echo::<i16>(&mut d, "echo_i16");
    echo::<u32>(&mut d, "echo_u32");
    echo::<i32>(&mut d, "echo_i32");
    echo::<u64>(&mut d, "echo_u64");
    echo::<i64>(&mut d, "echo_i64");
    echo::<u128>(&mut d, "echo_u128");
    echo::<i128>(&mut d, "echo_i128");
    echo::<f32>(&mut d, "echo_f32");
    echo::<f64>(&mut d, "echo_f64");
    echo::<char>(&mut d, "echo_char");
    echo::<String>(&mut d, "echo_string");
    echo::<()>(&mut d, "echo_unit");
    echo::<Unit>(&mut d, "echo_unit_struct");
    echo::<Newtype>(&mut d, "echo_newtype");
    echo::<Vec<u8>>(&mut d, "echo_bytes");
    echo::<Vec<i32>>(&mut d, "echo_vec_i32");
    echo::<Vec<String>>(&mut d, "echo_vec_string");
    echo::<Vec<Vec<u64>>>(&mut d, "echo_vec_vec");
    echo::<HashMap<String, u32>>(&mut d, "echo_hashmap");
    echo::<BTreeMap<u32, Vec<String>>>(&mut d, "echo_btreemap");
    echo::<Person>(&mut d, "echo_person");
    echo::<Vec<Person>>(&mut d, "echo_people");
    echo::<Shape>(&mut d, "echo_shape");
    echo::<Option<u32>>(&mut d, "echo_option");
    echo::<Option<Option<String>>>(&mut d, "echo_option_option");
    echo::<Option<Address>>(&mut d, "echo_option_struct");
    echo::<(u8, String, Option<bool>, [i16; 3])>(&mut d, "echo_tuple");
    echo::<Result<u32, String>>(&mut d, "echo_result");
    d
}

fn serve(d: Dispatcher) -> (Server, FuncClient) {
    let server = Server::builder()
        .workers(2)
        .handler(d.into_handler())
        .bind("127.0.0.1:0")
        .expect("bind");
    let client = Client::builder(server.local_addr())
        .connect()
        .expect("connect");
    (server, FuncClient::new(client))
}

/// Calls `name(value)` and checks that the same value comes back.
fn round_trip<T>(fc: &FuncClient, name: &str, value: T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let back: T = fc
        .call(name, &value)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // Values can be megabytes long: do not print them.
    assert!(back == value, "{name}: a different value came back");
}

/// The text of an `Error::Server`, or a panic naming what came instead.
fn server_text(outcome: Result<impl Debug, Error>) -> String {
    match outcome {
        Err(Error::Server(text)) => text,
        other => panic!("expected Error::Server, got {other:?}"),
    }
}

/// Which local codec error (`"encode"` or `"decode"`) and its text, or a panic naming what
/// came instead.
fn io_error(outcome: Result<impl Debug, Error>) -> (&'static str, String) {
    match outcome {
        Err(Error::Encode(text)) => ("encode", text),
        Err(Error::Decode(text)) => ("decode", text),
        other => panic!("expected Error::Encode or Error::Decode, got {other:?}"),
    }
}

fn person(n: u32) -> Person {
    Person {
        name: format!("person {n} \u{e9}\u{1F980}"),
        age: (n % 120) as u8,
        emails: (0..n % 4)
            .map(|i| format!("p{n}.{i}@example.org"))
            .collect(),
        address: (n % 2 == 0).then(|| Address {
            street: format!("{n} Rust Road"),
            zip: 10_000 + n,
        }),
        scores: (0..n % 5).map(|i| (format!("k{i}"), -(i as i64))).collect(),
        shape: match n % 4 {
            0 => Shape::Empty,
            1 => Shape::Circle(n as f64 / 3.0),
            2 => Shape::Rect { w: n, h: n * 2 },
            _ => Shape::Pair(-1, 1),
        },
        unit: (),
    }
}

// ----- round trips ---------------------------------------------------------------------------

#[test]
fn primitives_round_trip() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        for v in [false, true] {
            round_trip(&fc, "echo_bool", v);
        }
        for v in [0, 1, 250, 251, u8::MAX] {
            round_trip(&fc, "echo_u8", v);
        }
        for v in [i8::MIN, -1, 0, i8::MAX] {
            round_trip(&fc, "echo_i8", v);
        }
        for v in [0, 250, 251, u16::MAX] {
            round_trip(&fc, "echo_u16", v);
        }
        for v in [i16::MIN, -300, 300, i16::MAX] {
            round_trip(&fc, "echo_i16", v);
        }
        for v in [0, 65_536, u32::MAX] {
            round_trip(&fc, "echo_u32", v);
        }
        for v in [i32::MIN, -1, i32::MAX] {
            round_trip(&fc, "echo_i32", v);
        }
        for v in [0, 1 << 40, u64::MAX] {
            round_trip(&fc, "echo_u64", v);
        }
        for v in [i64::MIN, -1, 0, i64::MAX] {
            round_trip(&fc, "echo_i64", v);
        }
        for v in [0, u128::MAX] {
            round_trip(&fc, "echo_u128", v);
        }
        for v in [i128::MIN, i128::MAX] {
            round_trip(&fc, "echo_i128", v);
        }
        for v in [0.0, -1.5, f32::MAX, f32::INFINITY] {
            round_trip(&fc, "echo_f32", v);
        }
        for v in [0.1, -0.0, f64::MIN_POSITIVE, f64::NEG_INFINITY] {
            let back: f64 = fc.call("echo_f64", &v).unwrap();
            assert_eq!(back.to_bits(), v.to_bits());
        }
        let nan: f64 = fc.call("echo_f64", &f64::NAN).unwrap();
        assert!(nan.is_nan());
        for v in ['a', '\0', '\u{e9}', '\u{1F980}'] {
            round_trip(&fc, "echo_char", v);
        }
        round_trip(&fc, "echo_unit", ());
        round_trip(&fc, "echo_unit_struct", Unit);
        round_trip(&fc, "echo_newtype", Newtype(u64::MAX));
        let sum: i64 = fc.call("add", &(2i64, 3i64)).unwrap();
        assert_eq!(sum, 5);
        let sum: i64 = fc.call("add", &(i64::MIN + 1, -1i64)).unwrap();
        assert_eq!(sum, i64::MIN);
    });
}

#[test]
fn strings_round_trip() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        for s in [
            String::new(),
            "x".into(),
            "h\u{e9}llo, w\u{f6}rld \u{1F980}".into(),
            "quote \" backslash \\ nul \0".into(),
            "long ".repeat(20_000),
        ] {
            round_trip(&fc, "echo_string", s);
        }
        // `&str` arguments decode as `String` on the server.
        let back: String = fc.call("echo_string", "borrowed").unwrap();
        assert_eq!(back, "borrowed");
        let n: u64 = fc.call("len", "\u{1F980}").unwrap();
        assert_eq!(n, 4);
    });
}

#[test]
fn vectors_round_trip() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        round_trip(&fc, "echo_bytes", Vec::<u8>::new());
        round_trip(&fc, "echo_bytes", (0..=255).collect::<Vec<u8>>());
        // Across the size classes of the decoder's limits (the class above 16 MiB is
        // covered by the codec's unit tests).
        for len in [4 << 10, (4 << 10) + 1, 300 << 10, 3 << 20] {
            round_trip(&fc, "echo_bytes", vec![0xA5u8; len]);
        }
        round_trip(&fc, "echo_vec_i32", vec![i32::MIN, -1, 0, 1, i32::MAX]);
        round_trip(&fc, "echo_vec_i32", (0..100_000).collect::<Vec<i32>>());
        round_trip(
            &fc,
            "echo_vec_string",
            vec![String::new(), "a".into(), "\u{1F980}".into()],
        );
        round_trip(
            &fc,
            "echo_vec_vec",
            vec![vec![], vec![1], vec![u64::MAX, 0, 7]],
        );
        // A slice argument decodes as a Vec.
        let back: Vec<i32> = fc.call("echo_vec_i32", &[1, 2, 3][..]).unwrap();
        assert_eq!(back, [1, 2, 3]);
    });
}

#[test]
fn maps_round_trip() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        round_trip(&fc, "echo_hashmap", HashMap::<String, u32>::new());
        let map: HashMap<String, u32> = (0..500).map(|i| (format!("key{i}"), i * 7)).collect();
        round_trip(&fc, "echo_hashmap", map);
        let tree: BTreeMap<u32, Vec<String>> = (0..50)
            .map(|i| (i, (0..i % 3).map(|j| j.to_string()).collect()))
            .collect();
        round_trip(&fc, "echo_btreemap", tree);
    });
}

#[test]
fn structs_enums_and_options_round_trip() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        for n in 0..8 {
            round_trip(&fc, "echo_person", person(n));
        }
        round_trip(&fc, "echo_people", (0..200).map(person).collect::<Vec<_>>());
        for shape in [
            Shape::Empty,
            Shape::Circle(2.5),
            Shape::Rect { w: 3, h: 4 },
            Shape::Pair(i8::MIN, i8::MAX),
        ] {
            round_trip(&fc, "echo_shape", shape);
        }
        for v in [None, Some(0), Some(u32::MAX)] {
            round_trip(&fc, "echo_option", v);
        }
        for v in [None, Some(None), Some(Some("inner".to_string()))] {
            round_trip(&fc, "echo_option_option", v);
        }
        round_trip(&fc, "echo_option_struct", None::<Address>);
        round_trip(
            &fc,
            "echo_option_struct",
            Some(Address {
                street: "1 Main St".into(),
                zip: 12345,
            }),
        );
        round_trip(
            &fc,
            "echo_tuple",
            (7u8, "seven".to_string(), Some(false), [-1i16, 0, 1]),
        );
        round_trip(&fc, "echo_result", Ok::<u32, String>(1));
        round_trip(&fc, "echo_result", Err::<u32, String>("no".into()));
    });
}

// ----- errors --------------------------------------------------------------------------------

#[test]
fn unknown_functions() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let err = fc.call::<_, i64>("nope", &()).unwrap_err();
        assert!(
            matches!(&err, Error::Server(msg) if msg == "unknown function \"nope\""),
            "{err:?}"
        );
        let text = server_text(fc.call::<_, ()>("Kv.get", "k"));
        assert_eq!(text, r#"unknown function "Kv.get""#);
        // The name is quoted with Rust's escapes.
        let text = server_text(fc.call::<_, ()>("a\"b\n", &()));
        assert_eq!(text, r#"unknown function "a\"b\n""#);
        // Names are case-sensitive.
        let text = server_text(fc.call::<_, i64>("ADD", &(1i64, 2i64)));
        assert_eq!(text, r#"unknown function "ADD""#);
        // A name that is not UTF-8 (only a raw client can send one).
        let raw = fc.client().call(&[2, 0xFF, b'x']).unwrap_err();
        assert_eq!(
            server_text(Err::<(), _>(raw)),
            "unknown function \"\u{FFFD}x\""
        );
    });
}

#[test]
fn undecodable_arguments() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        // Too few bytes for (i64, i64).
        let text = server_text(fc.call::<_, i64>("add", &(1i64,)));
        assert_eq!(
            text,
            r#"cannot decode arguments of "add": the input is 1 bytes too short"#
        );
        // Too many: "hello" is [5, h, e, l, l, o]; (i64, i64) takes two bytes of it.
        let text = server_text(fc.call::<_, i64>("add", "hello"));
        assert_eq!(
            text,
            r#"cannot decode arguments of "add": 4 bytes left over after the value (the types on the two sides differ)"#
        );
        // An enum variant that does not exist.
        let text = server_text(fc.call::<_, Shape>("echo_shape", &7u32));
        assert_eq!(
            text,
            r#"cannot decode arguments of "echo_shape": invalid value: integer `7`, expected variant index 0 <= i < 4"#
        );
        // Invalid UTF-8 in a String.
        let text = server_text(fc.call::<_, String>("echo_string", &vec![0xFFu8, 0xFE]));
        assert!(
            text.starts_with(r#"cannot decode arguments of "echo_string": invalid UTF-8"#),
            "{text}"
        );
        // An invalid bool.
        let text = server_text(fc.call::<_, bool>("echo_bool", &2u8));
        assert_eq!(
            text,
            r#"cannot decode arguments of "echo_bool": invalid bool value 2"#
        );
        // The server is still fine.
        let sum: i64 = fc.call("add", &(1i64, 1i64)).unwrap();
        assert_eq!(sum, 2);
    });
}

#[test]
fn hostile_length_prefixes_are_refused_without_allocating() {
    run(|| {
        let (server, fc) = serve(dispatcher());
        // "echo_string" with a string claiming 2^60 bytes, then 2^40, in a few bytes.
        for claim in [1u64 << 60, 1 << 40, 1 << 20] {
            let mut req = Vec::new();
            codec::encode_request(&mut req, "echo_string", &()).unwrap();
            req.push(0xFD);
            req.extend_from_slice(&claim.to_le_bytes());
            let err = fc.client().call(&req).unwrap_err();
            assert_eq!(
                server_text(Err::<(), _>(err)),
                r#"cannot decode arguments of "echo_string": a length prefix claims more than the input can hold"#
            );
        }
        // The same for a Vec<u64> (serde preallocates at most 1 MiB, then runs out of input).
        let mut req = Vec::new();
        codec::encode_request(&mut req, "echo_vec_vec", &()).unwrap();
        req.push(0xFD);
        req.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let text = server_text(fc.client().call(&req).map(|r| r.len()));
        assert!(
            text.starts_with(r#"cannot decode arguments of "echo_vec_vec": "#),
            "{text}"
        );
        round_trip(&fc, "echo_string", "still here".to_string());
        let stats = server.stats();
        assert_eq!((stats.calls, stats.errors.server), (1, 4));
    });
}

#[test]
fn oversized_arguments_are_refused_before_decoding() {
    run(|| {
        let mut d = dispatcher();
        d.set_max_args_len(100);
        assert_eq!(d.max_args_len(), 100);
        let (_server, fc) = serve(d);
        // 200 bytes of string + 1 byte of length: 201 bytes of arguments.
        let text = server_text(fc.call::<_, String>("echo_string", &"x".repeat(200)));
        assert_eq!(
            text,
            r#"cannot decode arguments of "echo_string": 201 bytes exceed the limit of 100 bytes"#
        );
        // At the limit exactly: accepted.
        round_trip(&fc, "echo_string", "y".repeat(99));
    });
}

#[test]
fn function_errors_reach_the_caller_as_their_text() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let err = fc.call::<_, i64>("div", &(1i64, 0i64)).unwrap_err();
        assert!(
            matches!(&err, Error::Server(msg) if msg == "cannot divide 1 by 0"),
            "{err:?}"
        );
        let text = server_text(fc.call::<_, u32>("lookup", "k1"));
        assert_eq!(text, "no such key: k1");
        let q: i64 = fc.call("div", &(7i64, 2i64)).unwrap();
        assert_eq!(q, 3);
    });
}

#[test]
fn panicking_functions_are_caught() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        for _ in 0..3 {
            let text = server_text(fc.call::<_, ()>("boom", &()));
            assert_eq!(text, "handler panicked: boom");
        }
        // The workers live on.
        let sum: i64 = fc.call("add", &(1i64, 2i64)).unwrap();
        assert_eq!(sum, 3);
    });
}

#[test]
fn unencodable_results_and_arguments() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let text = server_text(fc.call::<_, ()>("bad_result", &()));
        assert_eq!(
            text,
            r#"cannot encode the result of "bad_result": not today"#
        );

        let (kind, text) = io_error(fc.call::<_, String>("echo_string", &Unencodable));
        assert_eq!(kind, "encode");
        assert_eq!(
            text,
            r#"cannot encode arguments of "echo_string": not today"#
        );
        let (kind, text) = io_error(fc.send("echo_string", &Unencodable));
        assert_eq!(kind, "encode");
        assert_eq!(
            text,
            r#"cannot encode arguments of "echo_string": not today"#
        );

        // Names the layout cannot carry.
        let (kind, text) = io_error(fc.call::<_, ()>("", &()));
        assert_eq!(kind, "encode");
        assert_eq!(
            text,
            r#"cannot encode arguments of "": the function name is empty"#
        );
        let long = "n".repeat(256);
        let (kind, text) = io_error(fc.call::<_, ()>(&long, &()));
        assert_eq!(kind, "encode");
        assert_eq!(
            text,
            format!(
                "cannot encode arguments of {long:?}: the function name is 256 bytes long, \
                 more than 255"
            )
        );
        // Nothing was sent for them.
        assert_eq!(fc.client().pending_requests(), 0);
        let sum: i64 = fc.call("add", &(1i64, 2i64)).unwrap();
        assert_eq!(sum, 3);
    });
}

#[test]
fn results_of_the_wrong_type() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        // add returns 5, the single byte 10 (zigzag): a String of 10 bytes that are not there.
        let (kind, text) = io_error(fc.call::<_, String>("add", &(2i64, 3i64)));
        assert_eq!(kind, "decode");
        assert_eq!(
            text,
            "cannot decode the result as alloc::string::String: the input is 10 bytes too short"
        );
        // A result with bytes left over: "abc" is [3, a, b, c].
        let (kind, text) = io_error(fc.call::<_, u8>("echo_string", "abc"));
        assert_eq!(kind, "decode");
        assert_eq!(
            text,
            "cannot decode the result as u8: 3 bytes left over after the value (the types on \
             the two sides differ)"
        );
    });
}

#[test]
fn malformed_requests_from_raw_clients() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let raw = fc.client();
        let cases: [(&[u8], &str); 3] = [
            (b"", "malformed request: empty request"),
            (b"\x00add", "malformed request: name length 0 is reserved"),
            (
                b"\x05a",
                "malformed request: name length 5 but only 1 bytes follow",
            ),
        ];
        for (req, want) in cases {
            let text = server_text(raw.call(req).map(|r| r.len()));
            assert_eq!(text, want);
        }
    });
}

#[test]
fn timeouts_and_closed_clients() {
    run(|| {
        let gate = Gate::new();
        let _open = OpenOnDrop(gate.clone());
        let mut d = dispatcher();
        let g = gate.clone();
        d.add_func("wait", move |(): ()| -> Result<bool, String> {
            Ok(g.wait())
        });
        let (_server, fc) = serve(d);
        let err = fc
            .call_timeout::<_, bool>("wait", &(), Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        let mut pending = fc
            .call_async_timeout::<_, bool>("wait", &(), Duration::from_millis(50))
            .unwrap();
        wait_until(WAIT, "the call to time out", || pending.is_done());
        assert!(matches!(pending.try_wait(), Some(Err(Error::Timeout))));
        gate.open();
        let opened: bool = fc
            .call_timeout("wait", &(), Duration::from_secs(5))
            .unwrap();
        assert!(opened);

        fc.client().close();
        let err = fc.call::<_, i64>("add", &(1i64, 2i64)).unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
        let err = fc.send("add", &(1i64, 2i64)).unwrap_err();
        assert!(matches!(err, Error::Closed), "{err:?}");
    });
}

// ----- services and context -------------------------------------------------------------------

#[derive(Default)]
struct Kv {
    map: Mutex<BTreeMap<String, Person>>,
}

impl Kv {
    fn set(&self, (key, value): (String, Person)) -> Result<Option<Person>, String> {
        Ok(self.map.lock().unwrap().insert(key, value))
    }
    fn get(&self, key: String) -> Result<Person, NotFound> {
        self.map
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or(NotFound(key))
    }
    fn delete(&self, key: String) -> Result<(), NotFound> {
        self.map
            .lock()
            .unwrap()
            .remove(&key)
            .map(drop)
            .ok_or(NotFound(key))
    }
    fn keys(&self, (): ()) -> Result<Vec<String>, String> {
        Ok(self.map.lock().unwrap().keys().cloned().collect())
    }
}

#[test]
fn services_share_their_state() {
    run(|| {
        let kv = Arc::new(Kv::default());
        let mut d = Dispatcher::new();
        d.add_service("Kv", kv.clone())
            .method("set", Kv::set)
            .method("get", Kv::get)
            .method("delete", Kv::delete)
            .method("keys", Kv::keys)
            .method_ctx("whoami", |kv: &Kv, ctx: &RequestCtx, (): ()| {
                Ok::<_, String>((ctx.conn_id(), kv.map.lock().unwrap().len()))
            })
            .func("version", |(): ()| Ok::<_, String>("1.0"));
        assert_eq!(d.len(), 6);
        let mut names: Vec<&str> = d.names().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "Kv.delete",
                "Kv.get",
                "Kv.keys",
                "Kv.set",
                "Kv.version",
                "Kv.whoami"
            ]
        );
        let (_server, fc) = serve(d);

        let old: Option<Person> = fc.call("Kv.set", &("a", person(1))).unwrap();
        assert_eq!(old, None);
        let old: Option<Person> = fc.call("Kv.set", &("a", person(2))).unwrap();
        assert_eq!(old, Some(person(1)));
        let _: Option<Person> = fc.call("Kv.set", &("b", person(3))).unwrap();
        let p: Person = fc.call("Kv.get", "a").unwrap();
        assert_eq!(p, person(2));
        let keys: Vec<String> = fc.call("Kv.keys", &()).unwrap();
        assert_eq!(keys, ["a", "b"]);
        fc.call::<_, ()>("Kv.delete", "a").unwrap();
        let text = server_text(fc.call::<_, ()>("Kv.delete", "a"));
        assert_eq!(text, "no such key: a");
        let text = server_text(fc.call::<_, Person>("Kv.get", "a"));
        assert_eq!(text, "no such key: a");
        // The server's state is the one we kept a handle on.
        assert_eq!(kv.map.lock().unwrap().len(), 1);
        let (_, len): (u64, usize) = fc.call("Kv.whoami", &()).unwrap();
        assert_eq!(len, 1);
        let v: String = fc.call("Kv.version", &()).unwrap();
        assert_eq!(v, "1.0");
    });
}

#[test]
fn functions_see_the_request_context() {
    run(|| {
        let mut d = Dispatcher::new();
        d.add_func_ctx("whoami", |ctx: &RequestCtx, (): ()| {
            Ok::<_, String>((ctx.peer_addr().to_string(), ctx.conn_id()))
        });
        let (server, fc) = serve(d);
        let (peer, id1): (String, u64) = fc.call("whoami", &()).unwrap();
        assert!(peer.starts_with("127.0.0.1:"), "{peer}");
        let (peer2, id2): (String, u64) = fc.call("whoami", &()).unwrap();
        assert_eq!((&peer2, id2), (&peer, id1), "same connection");
        let other = FuncClient::new(Client::builder(server.local_addr()).connect().unwrap());
        let (peer3, id3): (String, u64) = other.call("whoami", &()).unwrap();
        assert_ne!(id3, id1);
        assert_ne!(peer3, peer);
    });
}

#[test]
#[should_panic(expected = "function \"add\" is already registered")]
fn duplicate_names_panic() {
    let mut d = Dispatcher::new();
    d.add_func("add", |x: i64| Ok::<_, String>(x));
    d.add_func("add", |x: i64| Ok::<_, String>(x));
}

#[test]
#[should_panic(expected = "function name \"\" must be 1 to 255 bytes long")]
fn empty_names_panic() {
    Dispatcher::new().add_func("", |x: i64| Ok::<_, String>(x));
}

#[test]
#[should_panic(expected = "must be 1 to 255 bytes long")]
fn long_service_names_panic() {
    let mut d = Dispatcher::new();
    d.add_service(&"s".repeat(250), Arc::new(()))
        .func("method", |x: i64| Ok::<_, String>(x));
}

#[test]
fn dispatcher_bookkeeping() {
    let mut d = Dispatcher::new();
    assert!(d.is_empty());
    d.add_func("a", |x: i64| Ok::<_, String>(x))
        .add_func_ctx("b", |_: &RequestCtx, x: i64| Ok::<_, String>(x));
    assert_eq!(d.len(), 2);
    assert!(d.contains("a") && d.contains("b") && !d.contains("c"));
    assert_eq!(d.max_args_len(), batchrpc::typed::DEFAULT_MAX_ARGS_LEN);
    assert_eq!(
        format!("{d:?}"),
        r#"Dispatcher { funcs: ["a", "b"], max_args_len: 16777216 }"#
    );
    let name = "x".repeat(255);
    d.add_func(&name, |x: i64| Ok::<_, String>(x));
    assert!(d.contains(&name));
}

// ----- call styles ---------------------------------------------------------------------------

#[test]
fn async_calls_and_polling() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let calls: Vec<_> = (0..100i64)
            .map(|i| fc.call_async::<_, i64>("add", &(i, i)).unwrap())
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.wait().unwrap(), 2 * i as i64);
        }
        let mut pending = fc.call_async::<_, String>("echo_string", "polled").unwrap();
        wait_until(WAIT, "the call to complete", || pending.is_done());
        assert_eq!(pending.try_wait().unwrap().unwrap(), "polled");
        assert!(pending.try_wait().is_none());
        // Errors come through try_wait too, and dropping a handle cancels quietly.
        let mut failing = fc.call_async::<_, i64>("div", &(1i64, 0i64)).unwrap();
        wait_until(WAIT, "the call to complete", || failing.is_done());
        let text = server_text(failing.try_wait().unwrap());
        assert_eq!(text, "cannot divide 1 by 0");
        drop(fc.call_async::<_, i64>("add", &(1i64, 1i64)).unwrap());
        assert_eq!(fc.call::<_, i64>("add", &(1i64, 1i64)).unwrap(), 2);
    });
}

#[test]
fn fire_and_forget() {
    run(|| {
        let total = Arc::new(AtomicU64::new(0));
        let mut d = dispatcher();
        let t = total.clone();
        d.add_func("bump", move |n: u64| -> Result<(), String> {
            t.fetch_add(n, Ordering::SeqCst);
            Ok(())
        });
        let (_server, fc) = serve(d);
        for n in 1..=10u64 {
            fc.send("bump", &n).unwrap();
        }
        // Errors of sent calls are not reported anywhere; the server goes on.
        fc.send("nope", &()).unwrap();
        fc.send("boom", &()).unwrap();
        wait_until(WAIT, "the sent calls to run", || {
            total.load(Ordering::SeqCst) == 55
        });
    });
}

#[test]
fn typed_batches() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let mut batch = fc.batch().timeout(Duration::from_secs(5));
        assert!(batch.is_empty());
        let sum = batch.add::<_, i64>("add", &(20i64, 22i64)).unwrap();
        let text = batch.add::<_, String>("echo_string", "batched").unwrap();
        let missing = batch.add::<_, u32>("nope", &()).unwrap();
        // Fails at once, and takes no place in the batch.
        let (kind, _) = io_error(batch.add::<_, ()>("echo_string", &Unencodable));
        assert_eq!(kind, "encode");
        let who = batch.add::<_, Person>("echo_person", &person(5)).unwrap();
        let sums: Vec<_> = (0..50i64)
            .map(|i| batch.add::<_, i64>("add", &(i, 1i64)).unwrap())
            .collect();
        assert_eq!(batch.len(), 54);
        assert_eq!((sum.index(), who.index()), (0, 3));

        let results: FuncBatchResults = batch.call();
        assert_eq!(results.len(), 54);
        assert_eq!(results.get(sum).unwrap(), 42);
        assert_eq!(results.get(sum).unwrap(), 42, "a result may be read twice");
        assert_eq!(results.get(text).unwrap(), "batched");
        assert_eq!(
            server_text(results.get(missing)),
            r#"unknown function "nope""#
        );
        assert_eq!(results.get(who).unwrap(), person(5));
        for (i, call) in sums.into_iter().enumerate() {
            assert_eq!(results.get(call).unwrap(), i as i64 + 1);
        }

        // A call of one batch cannot read the results of another.
        let mut other = fc.batch();
        let foreign = other.add::<_, i64>("add", &(1i64, 1i64)).unwrap();
        let empty = fc.batch().call();
        assert!(empty.is_empty());
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| empty.get(foreign)))
            .unwrap_err();
        let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("another batch"), "{msg}");
        assert_eq!(other.call().get(foreign).unwrap(), 2);
    });
}

/// Arguments whose serialization makes a typed call itself (on the same thread).
struct CallsWhileEncoding(FuncClient);

impl Serialize for CallsWhileEncoding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inner: String = self
            .0
            .call("echo_string", "inner")
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&inner)
    }
}

#[test]
fn calls_made_while_encoding_arguments() {
    run(|| {
        let (_server, fc) = serve(dispatcher());
        let outer: String = fc
            .call("echo_string", &CallsWhileEncoding(fc.clone()))
            .unwrap();
        assert_eq!(outer, "inner");
        // The thread's buffer is still usable afterwards.
        assert_eq!(fc.call::<_, i64>("add", &(1i64, 2i64)).unwrap(), 3);
    });
}

#[test]
fn inline_handlers() {
    run(|| {
        let server = Server::builder()
            .workers(0)
            .handler(dispatcher().into_handler())
            .bind("127.0.0.1:0")
            .unwrap();
        let fc = FuncClient::from(Client::builder(server.local_addr()).connect().unwrap());
        assert_eq!(fc.call::<_, i64>("add", &(1i64, 2i64)).unwrap(), 3);
        assert_eq!(
            server_text(fc.call::<_, ()>("boom", &())),
            "handler panicked: boom"
        );
        round_trip(&fc, "echo_person", person(6));
    });
}

#[test]
fn concurrent_typed_calls() {
    run(|| {
        let (server, fc) = serve(dispatcher());
        let threads: Vec<_> = (0..8i64)
            .map(|t| {
                let fc = fc.clone();
                std::thread::spawn(move || {
                    for i in 0..200i64 {
                        match i % 4 {
                            0 => assert_eq!(fc.call::<_, i64>("add", &(t, i)).unwrap(), t + i),
                            1 => {
                                let s = format!("t{t} i{i}");
                                assert_eq!(fc.call::<_, String>("echo_string", &s).unwrap(), s);
                            }
                            2 => {
                                let p = person((t * 200 + i) as u32);
                                let pending = fc.call_async::<_, Person>("echo_person", &p);
                                assert_eq!(pending.unwrap().wait().unwrap(), p);
                            }
                            _ => {
                                let text = server_text(fc.call::<_, i64>("div", &(i, 0i64)));
                                assert_eq!(text, format!("cannot divide {i} by 0"));
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("caller thread");
        }
        // A quarter of the calls fail (division by zero), and are counted as such.
        let stats = server.stats();
        assert_eq!((stats.calls, stats.errors.server), (8 * 150, 8 * 50));
        let stats = fc.client().stats();
        assert_eq!((stats.calls, stats.errors.server), (8 * 150, 8 * 50));
        assert_eq!(fc.client().pending_requests(), 0);
    });
}

// ----- allocations -----------------------------------------------------------------------------

/// Allocations per call on the calling thread and in the server's handler, after a warm-up.
fn allocs_per_call<A, R>(name: &'static str, args: A, check: impl Fn(R)) -> (f64, f64)
where
    A: Serialize,
    R: DeserializeOwned,
{
    let d = Arc::new(dispatcher());
    let server_allocs = Arc::new(AtomicU64::new(0));
    let counted = server_allocs.clone();
    let server = Server::builder()
        .workers(1)
        .handler(move |ctx: &RequestCtx, req: &[u8], resp: &mut Vec<u8>| {
            let before = thread_allocs();
            let out = d.handle(ctx, req, resp);
            counted.fetch_add(thread_allocs() - before, Ordering::Relaxed);
            out
        })
        .bind("127.0.0.1:0")
        .unwrap();
    let fc = FuncClient::new(Client::builder(server.local_addr()).connect().unwrap());
    for _ in 0..1000 {
        check(fc.call(name, &args).unwrap());
    }
    const CALLS: u64 = 2000;
    server_allocs.store(0, Ordering::Relaxed);
    let before = thread_allocs();
    for _ in 0..CALLS {
        check(fc.call(name, &args).unwrap());
    }
    let client = (thread_allocs() - before) as f64 / CALLS as f64;
    // Every handler run has finished: each call waited for its response.
    let server = server_allocs.load(Ordering::Relaxed) as f64 / CALLS as f64;
    (client, server)
}

#[test]
fn small_typed_calls_allocate_nothing() {
    run(|| {
        let (client, server) = allocs_per_call("add", (2i64, 3i64), |r: i64| assert_eq!(r, 5));
        println!("add(i64, i64) -> i64: {client} allocations per call (client), {server} (server)");
        assert!(client < 0.01, "{client} allocations per call on the client");
        assert_eq!(server, 0.0, "allocations per call in the handler");
    });
}

#[test]
fn typed_calls_allocate_what_their_values_hold() {
    run(|| {
        let (client, server) =
            allocs_per_call("echo_string", "hello", |r: String| assert_eq!(r, "hello"));
        println!("echo_string(&str) -> String: {client} (client), {server} (server)");
        // The result String on the client; the argument String in the handler.
        assert!((1.0..1.01).contains(&client), "{client} on the client");
        assert_eq!(server, 1.0, "in the handler");
    });
}
