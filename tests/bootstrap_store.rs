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
fn wait_any_answers_the_first_key_set_and_times_out_with_none() {
    let (s, secret) = server();
    let addr = s.local_addr().to_string();
    let mut a = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let mut b = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let keys = ["x".to_string(), "y".to_string()];
    let start = Instant::now();
    assert_eq!(a.wait_any(&keys, Duration::from_millis(300)).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(300) && start.elapsed() < Duration::from_secs(5));
    let waiter = std::thread::spawn(move || (a.wait_any(&keys, Duration::from_secs(10)).unwrap(), a));
    std::thread::sleep(Duration::from_millis(100));
    b.set("y", b"second").unwrap();
    let (found, mut a) = waiter.join().unwrap();
    assert_eq!(found, Some((1, b"second".to_vec())));
    // Both set: the first in the caller's order.
    b.set("x", b"first").unwrap();
    assert_eq!(a.wait_any(&["x".into(), "y".into()], Duration::ZERO).unwrap(), Some((0, b"first".to_vec())));
    assert_eq!(a.wait_any(&["y".into(), "x".into()], Duration::ZERO).unwrap(), Some((0, b"second".to_vec())));
}

#[test]
fn a_key_set_on_close_appears_when_its_connection_ends_unless_already_set() {
    let (s, secret) = server();
    let addr = s.local_addr().to_string();
    let mut watcher = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let mut quits = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let mut reports = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    quits.set_on_close("gone/1", b"closed").unwrap();
    reports.set_on_close("gone/2", b"closed").unwrap();
    reports.set("gone/2", b"reported").unwrap();
    // Open connections: nothing yet.
    let keys = ["gone/1".to_string()];
    assert_eq!(watcher.wait(&keys, Duration::from_millis(200)).unwrap(), Err(keys.to_vec()));
    let start = Instant::now();
    drop(quits);
    drop(reports);
    let both = ["gone/1".to_string(), "gone/2".to_string()];
    let values = watcher.wait(&both, Duration::from_secs(5)).unwrap().expect("both keys appear");
    assert_eq!(values, vec![b"closed".to_vec(), b"reported".to_vec()]);
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    // Bounded: a connection cannot pile up such keys.
    let mut greedy = StoreClient::connect(&addr, &secret, Duration::from_secs(5)).unwrap();
    let refused = (0..64).map(|i| greedy.set_on_close(&format!("k/{i}"), b"")).find_map(Result::err);
    let e = refused.expect("a limit on on-close keys").to_string();
    assert!(e.contains("on-close"), "{e}");
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

/// Connects to the store and sends one byte of a client hello every `every`, as a slow or
/// hostile client would; returns when the store closes the connection, with how long that
/// took (or `None` if it was still open at `limit`).
fn trickle(addr: &str, every: Duration, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(every)).ok()?;
    let mut greeting = [0u8; 43];
    let _ = s.read_exact(&mut greeting);
    let mut buf = [0u8; 1];
    while start.elapsed() < limit {
        if s.write_all(b"F").is_err() {
            return Some(start.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            _ => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_trickling_client_is_cut_at_the_handshake_deadline() {
    let (s, _) = server();
    let addr = s.local_addr().to_string();
    // One byte a second would keep a per-read timeout happy forever; the whole handshake has
    // 10 s.
    let closed = trickle(&addr, Duration::from_millis(500), Duration::from_secs(20));
    let closed = closed.expect("the store never closed a connection that trickled its handshake");
    assert!(closed < Duration::from_secs(13), "closed after {closed:?}");
}

#[test]
fn a_flood_of_slow_unauthenticated_clients_does_not_keep_a_job_out() {
    let (s, secret) = server();
    let addr = s.local_addr().to_string();
    // 300 connections from one thread (bounded, loopback only) that start a handshake and
    // never finish it. The store keeps at most 64 handshakes in progress, dropping the oldest,
    // so that such connections can never fill the room of real clients (a few thousand of them
    // once did).
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(&addr).expect("connects");
        let _ = c.write_all(b"FERR");
        flood.push(c);
    }
    // A job starting during the flood: every client connects and works at once.
    let start = Instant::now();
    for r in 0..4 {
        let mut c = StoreClient::connect(&addr, &secret, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("client {r} kept out by the flood: {e}"));
        c.set(&format!("k{r}"), b"v").unwrap();
        assert_eq!(c.get(&format!("k{r}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert!(start.elapsed() < Duration::from_secs(5), "joining took {:?}", start.elapsed());
    // Well before the handshake deadline, the store has dropped all but its last 64.
    let closed_by_store = |c: &mut TcpStream| {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue, // the greeting
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    let open = flood.iter_mut().map(closed_by_store).filter(|closed| !closed).count();
    assert!(open <= 64, "{open} unauthenticated connections still open after {:?}", start.elapsed());
}

#[test]
fn a_client_dropped_to_make_room_tries_again() {
    // In front of the store, a listener that drops its first connection before the greeting,
    // as a store making room under a flood drops the oldest handshake (a real client's too),
    // and relays the next one to the store.
    let (s, secret) = server();
    let store = s.local_addr();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let front = std::thread::spawn(move || {
        drop(l.accept().unwrap().0);
        let (client, _) = l.accept().unwrap();
        let upstream = TcpStream::connect(store).unwrap();
        let pump = |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let a = pump(client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let b = pump(upstream, client);
        (a, b)
    });
    let mut c = StoreClient::connect(&addr, &secret, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("a client dropped once gave up: {e}"));
    c.set("k", b"v").unwrap();
    assert_eq!(c.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(c);
    let (a, b) = front.join().unwrap();
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn a_connection_closed_before_the_greeting_says_so() {
    // A listener that accepts and closes at once, as a store making room does.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        drop(c);
    });
    let Err(e) = StoreClient::connect(&addr, &Secret::new(b"x".to_vec()), Duration::from_secs(1)) else {
        panic!("a connection closed before its greeting was accepted")
    };
    t.join().unwrap();
    let text = e.to_string();
    assert!(text.contains("closed the connection before greeting") && text.contains(&addr), "{text}");
}
