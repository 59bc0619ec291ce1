//! The store over real sockets: authentication, garbage on the port, waits and their timeouts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferrovod::bootstrap::{Error, Secret, StoreClient, StoreServer};

fn server() -> (StoreServer, Secret) {
    let secret = Secret::new(b"job-secret".to_vec());
    (StoreServer::bind("127.0.0.1:0", secret.clone()).expect("binds"), secret)
}

#[test]
fn set_get_add_wait() {
    let (s, secret) = server();
    let addr = s.local_addr().to_string();
    let mut a = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).expect("a connects");
    let mut b = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).expect("b connects");
    assert_eq!(a.get("k").unwrap(), None);
    let waiter =
        std::thread::spawn(move || b.wait(&["k".to_string(), "j".to_string()], Duration::from_secs(10)).unwrap());
    a.set("k", b"v1").unwrap();
    a.set("j", b"v2").unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(vec![b"v1".to_vec(), b"v2".to_vec()]));
    assert_eq!(a.add("n", 5).unwrap(), 5);
    assert_eq!(a.add("n", -2).unwrap(), 3);
    let e = a.add("k", 1).unwrap_err().to_string();
    assert!(e.contains("not a counter"), "{e}");
}

#[test]
fn wait_times_out_naming_missing_keys() {
    let (s, secret) = server();
    let mut c = StoreClient::connect(&s.local_addr().to_string(), &secret, Duration::from_secs(5)).unwrap();
    c.set("here", b"").unwrap();
    let start = Instant::now();
    let missing = c.wait(&["here".into(), "gone".into()], Duration::from_millis(300)).unwrap().unwrap_err();
    assert_eq!(missing, vec!["gone".to_string()]);
    assert!(start.elapsed() >= Duration::from_millis(300) && start.elapsed() < Duration::from_secs(5));
}

#[test]
fn wrong_secret_is_refused() {
    let (s, _) = server();
    let err =
        StoreClient::connect(&s.local_addr().to_string(), &Secret::new(b"guess".to_vec()), Duration::from_secs(5))
            .err()
            .expect("refused");
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("wrong job secret"), "{err}");
}

#[test]
fn garbage_on_the_port_is_refused_and_good_clients_keep_working() {
    let (s, secret) = server();
    let addr = s.local_addr().to_string();
    let mut good = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    // Deterministic pseudo-random junk: several connections, various lengths.
    let mut x: u64 = 0x1234_5678_9abc_def0;
    let mut junk_conns = Vec::new();
    for len in [1usize, 75, 4096, 1 << 20] {
        let mut junk = vec![0u8; len];
        for b in &mut junk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = conn.write_all(&junk);
        junk_conns.push(conn);
        good.set(&format!("after-{len}"), b"x").unwrap();
    }
    // The server dropped every junk connection: reading reaches EOF (or a reset) after at most
    // its 43-byte hello.
    for mut conn in junk_conns {
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        assert!(rest.len() <= 43 + 33, "server kept talking: {} bytes", rest.len());
    }
    // A client that connects and says nothing does not hold anything up either.
    let _silent = TcpStream::connect(&addr).unwrap();
    let mut late = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    assert_eq!(late.get("after-1048576").unwrap(), Some(b"x".to_vec()));
}
