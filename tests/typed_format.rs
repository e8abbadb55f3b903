//! The typed layer with another `Format` than the default, over real loopback sockets: the
//! dispatcher and the function client use the format they are given, for every call style,
//! and a client whose format differs from the server's gets a clean error.

mod support;

use batchrpc::typed::{codec, Format};
use batchrpc::{Client, Dispatcher, Error, FuncClient, Server};
use support::run;

/// bincode 2 with fixed-width integers: a `u32` takes 4 bytes, where the default's varints
/// take 1 for small values.
struct FixedInt;

impl Format for FixedInt {
    type Error = String;

    fn encode<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), String> {
        let config = bincode::config::standard().with_fixed_int_encoding();
        let bytes = bincode::serde::encode_to_vec(value, config).map_err(|e| e.to_string())?;
        out.extend_from_slice(&bytes);
        Ok(())
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let config = bincode::config::standard()
            .with_fixed_int_encoding()
            .with_limit::<65536>();
        match bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())? {
            (value, n) if n == bytes.len() => Ok(value),
            (_, n) => Err(format!("{} bytes left over", bytes.len() - n)),
        }
    }
}

fn server() -> Server {
    let mut d = Dispatcher::<FixedInt>::with_format();
    d.add_func("add", |(a, b): (u32, u32)| Ok::<_, String>(a + b));
    d.add_service("Text", std::sync::Arc::new(()))
        .func("upper", |s: String| Ok::<_, String>(s.to_uppercase()));
    Server::builder()
        .handler(d.into_handler())
        .bind("127.0.0.1:0")
        .unwrap()
}

#[test]
fn every_call_style_uses_the_format_given() {
    run(|| {
        let server = server();
        let client = Client::builder(server.local_addr()).connect().unwrap();
        let fc = FuncClient::<FixedInt>::with_format(client.clone());
        assert_eq!(fc.call::<_, u32>("add", &(2u32, 3u32)).unwrap(), 5);
        let pending = fc.call_async::<_, String>("Text.upper", "abc").unwrap();
        assert_eq!(pending.wait().unwrap(), "ABC");
        let mut batch = fc.batch();
        let sum = batch.add::<_, u32>("add", &(40u32, 2u32)).unwrap();
        let loud = batch.add::<_, String>("Text.upper", "hi").unwrap();
        let results = batch.call();
        assert_eq!(results.get(sum).unwrap(), 42);
        assert_eq!(results.get(loud).unwrap(), "HI");
        fc.send("add", &(1u32, 1u32)).unwrap();

        // The bytes: the request's arguments and the answer are fixed-width.
        let mut req = Vec::new();
        codec::push_name(&mut req, "add").unwrap();
        FixedInt::encode(&mut req, &(2u32, 3u32)).unwrap();
        assert_eq!(req, b"\x03add\x02\x00\x00\x00\x03\x00\x00\x00");
        assert_eq!(&*client.call(&req).unwrap(), [5, 0, 0, 0]);
    });
}

#[test]
fn a_client_of_another_format_gets_a_decode_error_from_the_server() {
    run(|| {
        let server = server();
        let fc = FuncClient::new(Client::builder(server.local_addr()).connect().unwrap());
        // Default (varint) arguments: 2 bytes where the server reads 8.
        match fc.call::<_, u32>("add", &(2u32, 3u32)) {
            Err(Error::Server(text)) => assert!(
                text.starts_with(r#"cannot decode arguments of "add": "#),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
        // The connection is fine: a call the server can decode still works.
        let mut req = Vec::new();
        codec::push_name(&mut req, "add").unwrap();
        FixedInt::encode(&mut req, &(1u32, 1u32)).unwrap();
        assert_eq!(&*fc.client().call(&req).unwrap(), [2, 0, 0, 0]);
    });
}
