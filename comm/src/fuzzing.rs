//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).
//!
//! Each function runs one decoder of bytes that come from a peer, the store or a file, the way
//! the library runs it, and hands back what a target needs to check the result: the value
//! encoded again, or the verdict. The encoders are the library's own, so a round trip checks
//! that what one rank writes another reads back unchanged.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::{self, Error, FirstFailure, PeerInfo, Purpose, Secret, Topology};
use crate::engine::cache::Cache;
use crate::engine::negotiate::{self, Message, Table};
use crate::transport::{self, Tag};

pub use crate::bootstrap::MAX_MESSAGE;
/// The largest negotiation message a rank may send in one round.
pub const MAX_NEGOTIATION: usize = negotiate::MAX_MESSAGE;

const PEER: &str = "fuzzing";

/// Reads one framed message of type `T` (as [`bootstrap::read_msg`] with the store's cap) and
/// returns it framed again by [`bootstrap::write_msg`].
fn reframe<T: Serialize + DeserializeOwned>(frame: &[u8]) -> Result<Vec<u8>, Error> {
    let value: T = bootstrap::read_msg(&mut &frame[..], MAX_MESSAGE, PEER)?;
    let mut out = Vec::new();
    bootstrap::write_msg(&mut out, &value, PEER)?;
    Ok(out)
}

/// One store request as the server reads it, framed again.
pub fn store_request(frame: &[u8]) -> Result<Vec<u8>, Error> {
    reframe::<bootstrap::store::Request>(frame)
}

/// One store answer as a client reads it, framed again.
pub fn store_response(frame: &[u8]) -> Result<Vec<u8>, Error> {
    reframe::<bootstrap::store::Response>(frame)
}

/// Serves `input` as one authenticated connection's requests against an empty store and
/// returns the answers it wrote (waits do not wait). Panics if the store's accounting drifts.
pub fn store_session(input: &[u8]) -> Vec<u8> {
    bootstrap::store::serve_bytes(input)
}

/// The secret the handshake functions below use.
pub const SECRET: &[u8] = b"fuzzing secret";
/// Bytes of a server's greeting.
pub const SERVER_HELLO: usize = bootstrap::auth::SERVER_HELLO;
/// Bytes of a client's hello.
pub const CLIENT_HELLO: usize = bootstrap::auth::CLIENT_HELLO;
/// Bytes of the server's verdict.
pub const VERDICT: usize = bootstrap::auth::VERDICT;

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

/// Server side of the handshake: the client's hello (exactly [`CLIENT_HELLO`] bytes, or `None`)
/// judged against the server's nonce; `Ok` when it is accepted.
pub fn server_reads_hello(msg: &[u8], purpose: Purpose, nonce_s: &[u8; 32]) -> Option<Result<(), Error>> {
    let msg = fixed::<CLIENT_HELLO>(msg)?;
    let secret = Secret::new(SECRET);
    Some(
        bootstrap::auth::judge_client(&msg, &secret, purpose, nonce_s, PEER)
            .and_then(|verdict| bootstrap::auth::outcome(verdict, &msg, purpose, PEER.into())),
    )
}

/// Client side: the server's greeting (exactly [`SERVER_HELLO`] bytes, or `None`); its nonce.
pub fn client_reads_greeting(hello: &[u8]) -> Option<Result<Vec<u8>, Error>> {
    let hello = fixed::<SERVER_HELLO>(hello)?;
    Some(bootstrap::auth::read_greeting(&hello, PEER).map(<[u8]>::to_vec))
}

/// Client side: the server's verdict (exactly [`VERDICT`] bytes, or `None`) on the client's
/// nonce `nonce_c` and the server's `nonce_s`; `Ok` when it accepted and proved the secret.
pub fn client_reads_verdict(
    reply: &[u8],
    purpose: Purpose,
    nonce_c: &[u8; 32],
    nonce_s: &[u8; 32],
) -> Option<Result<(), Error>> {
    let reply = fixed::<VERDICT>(reply)?;
    let secret = Secret::new(SECRET);
    Some(bootstrap::auth::check_verdict(&reply, &secret, purpose, nonce_c, nonce_s, PEER.into()))
}

/// What a rank's TCP link says after the handshake.
pub fn tcp_hello(rank: usize, stream: usize, size: usize, streams: usize) -> Vec<u8> {
    transport::tcp::connect::hello(rank, stream, size, streams).to_vec()
}

/// The accepting rank `rank` of a world of `size` with `streams` streams per link reads a
/// hello (exactly 16 bytes, or `None`): the peer and stream it claims.
pub fn tcp_read_hello(
    hello: &[u8],
    rank: usize,
    size: usize,
    streams: usize,
) -> Option<Result<(usize, usize), String>> {
    let hello = fixed::<{ transport::tcp::connect::HELLO }>(hello)?;
    Some(transport::tcp::connect::read_hello(&hello, PEER, rank, size, streams))
}

/// The header in front of every TCP message (or stripe).
pub fn tcp_header(tag: Tag, total: u64, stripe: u16, stripes: u16) -> [u8; 32] {
    transport::tcp::pair::header(tag, total, stripe, stripes)
}

/// Checks a received header against the one expected.
pub fn tcp_check_header(got: &[u8; 32], expected: &[u8; 32]) -> Result<(), transport::Error> {
    transport::tcp::pair::check_header(1, got, expected)
}

/// A peer's published TCP address.
pub fn tcp_address(a: &[u8]) -> Option<std::net::SocketAddr> {
    transport::tcp::parse_address(a)
}

/// A peer's published shared-memory address: its cookie and its socket's abstract name.
pub fn shm_address(a: &[u8]) -> Option<(u64, Vec<u8>)> {
    transport::shm::parse_address(a).map(|(cookie, name)| (cookie, name.to_vec()))
}

/// The address [`shm_address`] reads.
pub fn shm_encode_address(cookie: u64, name: &[u8]) -> Vec<u8> {
    transport::shm::encode_address(cookie, name)
}

/// Whether a published abstract socket name can be connected to (it fits a `sockaddr_un`).
pub fn shm_socket_name_fits(name: &[u8]) -> bool {
    transport::shm::connect::address(name).is_ok()
}

/// A shared-memory hello (exactly 16 bytes, or `None`): the rank and cookie it claims.
pub fn shm_read_hello(hello: &[u8]) -> Option<(u64, u64)> {
    Some(transport::shm::connect::read_hello(&fixed(hello)?))
}

/// Which rank a hello from process `pid` claiming rank `from` is, for rank `rank` of a world of
/// `size` whose ranks published `pids`, when the ranks in `arrived` are already connected.
pub fn shm_awaited(from: u64, pid: u32, rank: usize, size: usize, pids: &[u32], arrived: &[bool]) -> Option<usize> {
    transport::shm::awaited(from, pid, rank, size, pids, |r| arrived.get(r).copied().unwrap_or(false))
}

/// Every rank's rendezvous record from the published values, and each rank's placement.
pub fn rendezvous(values: &[Vec<u8>]) -> Result<(Vec<PeerInfo>, Vec<Topology>), Error> {
    let peers = bootstrap::rendezvous::decode_peers(values)?;
    let topology = (0..peers.len()).map(|r| Topology::compute(&peers, r)).collect();
    Ok((peers, topology))
}

/// A first-failure record as a reader takes it from the store.
pub fn first_failure<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    FirstFailure::new("fuzzing").decode(bytes, PEER)
}

/// Frame bytes per rank for a cache of `cache_len` slots and `eager_bytes` of eager data.
pub fn negotiation_frame(cache_len: usize, eager_bytes: usize) -> usize {
    negotiate::frame_len(cache_len, eager_bytes)
}

/// How many bytes of each rank's message spilled past its frame, from a round's frames.
pub fn negotiation_spills(frame: usize, all: &[u8]) -> Result<Vec<usize>, crate::Error> {
    negotiate::spills(0, frame, all)
}

/// What one negotiation round decoded and decided.
#[derive(Debug)]
pub struct Round {
    /// Every rank's message, encoded again.
    pub encoded: Vec<Vec<u8>>,
    /// The decisions, as text (to compare two runs).
    pub agreement: String,
    /// Each ready tensor's size in bytes, as the fusion computes it.
    pub ready_bytes: Vec<usize>,
}

/// Decodes a round's frames and spilled tails (as rank 0 of `all.len() / frame` ranks), then
/// decides it as every rank does: against a cache that holds (in slot order, up to
/// `cache_slots`) the tensors rank 0 announces, and an empty table. The ready tensors then go
/// through the fusion's plan, as the engine does.
pub fn negotiation_round(frame: usize, all: &[u8], rest: &[u8], cache_slots: usize) -> Result<Round, crate::Error> {
    let mut messages = negotiate::decode_round(0, frame, all, rest)?;
    let encoded = messages.iter().map(|m| postcard::to_stdvec(m).unwrap_or_default()).collect();
    let mut cache = Cache::new(cache_slots.max(1));
    if let Some(first) = messages.first() {
        for (name, meta) in first.announce.iter().take(cache_slots) {
            cache.insert(name, meta, 0);
        }
    }
    let mut table = Table::new();
    let agreement = negotiate::agree(&mut messages, &mut cache, &mut table);
    let text = format!("{agreement:?}");
    let ready_bytes = agreement.ready.iter().map(|r| r.meta.bytes()).collect();
    let _ = crate::engine::fusion::plan(agreement.ready, 1 << 20);
    Ok(Round { encoded, agreement: text, ready_bytes })
}

/// Decodes one negotiation message alone (postcard bytes) and encodes it again.
pub fn negotiation_message(bytes: &[u8]) -> Option<Vec<u8>> {
    let m: Message = postcard::from_bytes(bytes).ok()?;
    postcard::to_stdvec(&m).ok()
}
