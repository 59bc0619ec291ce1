//! The connection handshake (bootstrap/auth.rs), both sides, checked against an HMAC-SHA256
//! computed here independently of the library.
//!
//! Input: a selector byte, then the bytes the other side sent (and the nonces). Checks: the
//! server accepts a client hello exactly when it carries the magic, version 1, the purpose and
//! a correct proof; the client accepts a greeting exactly when magic and version match, and a
//! verdict exactly when it is status 0 with the server's correct proof. Refusals are `Err`s
//! with a message, never panics.
#![no_main]

use ferrovod::bootstrap::Purpose;
use ferrovod::fuzzing::{
    CLIENT_HELLO, SECRET, SERVER_HELLO, VERDICT, client_reads_greeting, client_reads_verdict, server_reads_hello,
};
use ferrovod_fuzz::take;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

fn proof(role: &[u8], purpose: u8, first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).expect("any key length");
    for part in [role, &1u16.to_le_bytes(), &[purpose], first, second] {
        m.update(part);
    }
    m.finalize().into_bytes().to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [selector] = take::<1>(&mut data);
    let purpose = if selector & 0x80 == 0 { Purpose::Store } else { Purpose::Transport };
    match selector % 3 {
        0 => {
            // Server: nonce_s, then the client's hello. With bit 6 set, the fuzzer's hello gets
            // a correct proof, so that the accepting path is reached too.
            let nonce_s = take::<32>(&mut data);
            let mut msg = data.get(..CLIENT_HELLO).map(<[u8]>::to_vec).unwrap_or_else(|| data.to_vec());
            if selector & 0x40 != 0 && msg.len() == CLIENT_HELLO {
                let p = proof(b"client", msg[10], &nonce_s, &msg[11..43]);
                msg[43..].copy_from_slice(&p);
            }
            let Some(verdict) = server_reads_hello(&msg, purpose, &nonce_s) else {
                assert_ne!(msg.len(), CLIENT_HELLO);
                return;
            };
            let genuine = &msg[..8] == b"FERROVOD"
                && msg[8..10] == 1u16.to_le_bytes()
                && msg[10] == purpose as u8
                && msg[43..] == proof(b"client", msg[10], &nonce_s, &msg[11..43])[..];
            match verdict {
                Ok(()) => assert!(genuine, "accepted a hello without a correct proof: {msg:?}"),
                Err(e) => {
                    assert!(!genuine, "refused a genuine hello: {e}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        1 => {
            let Some(greeting) = client_reads_greeting(&data[..data.len().min(SERVER_HELLO)]) else {
                assert!(data.len() < SERVER_HELLO);
                return;
            };
            let fine = &data[..8] == b"FERROVOD" && data[8..10] == 1u16.to_le_bytes();
            match greeting {
                Ok(nonce) => {
                    assert!(fine);
                    assert_eq!(nonce, &data[11..SERVER_HELLO]);
                }
                Err(e) => assert!(!fine && !e.to_string().is_empty(), "{e}"),
            }
        }
        _ => {
            let nonce_c = take::<32>(&mut data);
            let nonce_s = take::<32>(&mut data);
            let mut reply = data.get(..VERDICT).map(<[u8]>::to_vec).unwrap_or_else(|| data.to_vec());
            if selector & 0x40 != 0 && reply.len() == VERDICT {
                let p = proof(b"server", purpose as u8, &nonce_c, &nonce_s);
                reply[1..].copy_from_slice(&p);
            }
            let Some(verdict) = client_reads_verdict(&reply, purpose, &nonce_c, &nonce_s) else {
                assert_ne!(reply.len(), VERDICT);
                return;
            };
            let genuine = reply[0] == 0 && reply[1..] == proof(b"server", purpose as u8, &nonce_c, &nonce_s)[..];
            match verdict {
                Ok(()) => assert!(genuine, "accepted a verdict without the server's proof"),
                Err(e) => assert!(!genuine && !e.to_string().is_empty(), "{e}"),
            }
        }
    }
});
