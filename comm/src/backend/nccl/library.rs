//! Finding and loading NCCL at run time, so that ferrovod builds and runs without CUDA and a
//! missing or broken library is an error that says what was tried, never a panic.
//!
//! Where it looks, in order: `FERROVOD_NCCL_LIBRARY` alone when set (an explicit choice that
//! fails is an error, not a fallback); else the candidates the caller knows of (the Python
//! package passes the copy that pip's `nvidia-nccl` wheel, torch's dependency, installs); else
//! `libnccl.so.2` through the dynamic loader's own search. `libnccl.so.2` is the only name the
//! pip wheel ships.

use std::ffi::{CStr, c_int};
use std::path::{Path, PathBuf};

use super::sys;
use crate::config;

/// The name the dynamic loader searches for.
pub const SONAME: &str = "libnccl.so.2";

/// Why NCCL could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// No candidate loaded.
    #[error("NCCL could not be loaded; tried: {}", tried.join("; "))]
    NotFound {
        /// Each candidate with the loader's reason.
        tried: Vec<String>,
    },
    /// The library loaded but lacks a function ferrovod needs (a version older than 2.14?).
    #[error("{path} has no {symbol} (NCCL 2.14 or newer is needed): {reason}")]
    MissingSymbol {
        /// The library.
        path: String,
        /// The function.
        symbol: &'static str,
        /// The loader's message.
        reason: String,
    },
}

/// A loaded NCCL and the functions ferrovod calls, resolved once.
pub struct Nccl {
    /// Where it was loaded from.
    pub path: String,
    pub(crate) get_version: sys::GetVersion,
    pub(crate) get_error_string: sys::GetErrorString,
    pub(crate) get_last_error: sys::GetLastError,
    pub(crate) get_unique_id: sys::GetUniqueId,
    pub(crate) comm_init_rank_config: sys::CommInitRankConfig,
    // Resolved so that a library without them is refused at load; ferrovod ends its
    // communicators with abort, which never waits for peers that may be gone.
    #[allow(dead_code)]
    pub(crate) comm_finalize: sys::CommOp,
    #[allow(dead_code)]
    pub(crate) comm_destroy: sys::CommOp,
    pub(crate) comm_abort: sys::CommOp,
    pub(crate) comm_get_async_error: sys::CommGetAsyncError,
    pub(crate) comm_count: sys::CommInt,
    pub(crate) comm_cu_device: sys::CommInt,
    pub(crate) comm_user_rank: sys::CommInt,
    pub(crate) all_reduce: sys::AllReduce,
    pub(crate) broadcast: sys::Broadcast,
    pub(crate) all_gather: sys::AllGather,
    pub(crate) reduce_scatter: sys::ReduceScatter,
    pub(crate) send: sys::Send,
    pub(crate) recv: sys::Recv,
    pub(crate) group_start: sys::Group,
    pub(crate) group_end: sys::Group,
    // Last: the functions above point into it, and it must outlive them (never unloaded
    // before they are gone; NCCL's own threads may still run at exit, so it is leaked).
    _library: &'static libloading::Library,
}

impl Nccl {
    /// Loads NCCL from the first place that has it (see the module docs).
    pub fn load(candidates: &[PathBuf]) -> Result<Nccl, LoadError> {
        let explicit = std::env::var_os(config::NCCL_LIBRARY.name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let places: Vec<PathBuf> = match explicit {
            Some(p) => vec![p],
            None => candidates.iter().cloned().chain([PathBuf::from(SONAME)]).collect(),
        };
        let mut tried = Vec::new();
        for place in &places {
            // SAFETY: loading NCCL runs its initialisers, which only set up the library itself.
            match unsafe { libloading::Library::new(place) } {
                Ok(lib) => return Nccl::resolve(Box::leak(Box::new(lib)), place),
                Err(e) => tried.push(format!("{} ({e})", place.display())),
            }
        }
        Err(LoadError::NotFound { tried })
    }

    fn resolve(lib: &'static libloading::Library, place: &Path) -> Result<Nccl, LoadError> {
        let path = place.display().to_string();
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol has the signature `nccl.h` gives it, which the field's
                // type spells (see `sys`).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }.map_err(|e| LoadError::MissingSymbol {
                    path: path.clone(),
                    symbol: $name,
                    reason: e.to_string(),
                })?
            };
        }
        Ok(Nccl {
            get_version: sym!("ncclGetVersion"),
            get_error_string: sym!("ncclGetErrorString"),
            get_last_error: sym!("ncclGetLastError"),
            get_unique_id: sym!("ncclGetUniqueId"),
            comm_init_rank_config: sym!("ncclCommInitRankConfig"),
            comm_finalize: sym!("ncclCommFinalize"),
            comm_destroy: sym!("ncclCommDestroy"),
            comm_abort: sym!("ncclCommAbort"),
            comm_get_async_error: sym!("ncclCommGetAsyncError"),
            comm_count: sym!("ncclCommCount"),
            comm_cu_device: sym!("ncclCommCuDevice"),
            comm_user_rank: sym!("ncclCommUserRank"),
            all_reduce: sym!("ncclAllReduce"),
            broadcast: sym!("ncclBroadcast"),
            all_gather: sym!("ncclAllGather"),
            reduce_scatter: sym!("ncclReduceScatter"),
            send: sym!("ncclSend"),
            recv: sym!("ncclRecv"),
            group_start: sym!("ncclGroupStart"),
            group_end: sym!("ncclGroupEnd"),
            path,
            _library: lib,
        })
    }

    /// The library's version code (major × 10000 + minor × 100 + patch for 2.9 and later).
    pub fn version(&self) -> Result<i32, String> {
        let mut v: c_int = 0;
        // SAFETY: writes one int through a valid pointer; needs no device.
        self.check(unsafe { (self.get_version)(&mut v) })?;
        Ok(v)
    }

    /// NCCL's text for result `code`.
    pub fn error_string(&self, code: sys::NcclResult) -> String {
        // SAFETY: returns a static NUL-terminated string for any code.
        let p = unsafe { (self.get_error_string)(code) };
        if p.is_null() {
            return format!("NCCL error {code}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// The NCCL of this process: loaded on first use from where [`Nccl::load`] looks (no
    /// candidates of its own: in a torch process, the dynamic loader finds the `libnccl.so.2`
    /// torch already loaded), and kept, or the reason it could not be.
    pub fn get() -> Result<&'static Nccl, LoadError> {
        static NCCL: std::sync::OnceLock<Result<Nccl, LoadError>> = std::sync::OnceLock::new();
        NCCL.get_or_init(|| Nccl::load(&[])).as_ref().map_err(Clone::clone)
    }

    /// `Ok` for success, else NCCL's words and the code.
    pub(crate) fn check(&self, code: sys::NcclResult) -> Result<(), String> {
        match code {
            sys::NCCL_SUCCESS => Ok(()),
            code => Err(format!("{} ({code})", self.error_string(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_every_place_tried() {
        if std::env::var_os(config::NCCL_LIBRARY.name).is_some() {
            eprintln!("SKIPPED: {} is set", config::NCCL_LIBRARY.name);
            return;
        }
        let bogus = std::env::temp_dir().join("no-such-dir/libnccl.so.2");
        match Nccl::load(std::slice::from_ref(&bogus)) {
            Err(LoadError::NotFound { tried }) => {
                assert!(tried[0].contains("no-such-dir/libnccl.so.2"), "{tried:?}");
                assert_eq!(tried.len(), 2, "{tried:?}");
            }
            // A machine with NCCL installed finds the system copy after the bogus one.
            Ok(n) => assert_eq!(n.path, SONAME),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_file_that_is_no_library_is_an_error_not_a_crash() {
        if std::env::var_os(config::NCCL_LIBRARY.name).is_some() {
            eprintln!("SKIPPED: {} is set", config::NCCL_LIBRARY.name);
            return;
        }
        let not_lib = std::env::temp_dir().join(format!("ferrovod-not-nccl-{}.so", std::process::id()));
        std::fs::write(&not_lib, b"not an ELF file").unwrap();
        let loaded = Nccl::load(std::slice::from_ref(&not_lib));
        std::fs::remove_file(&not_lib).unwrap();
        match loaded {
            Err(LoadError::NotFound { tried }) => assert!(tried[0].contains("ferrovod-not-nccl"), "{tried:?}"),
            Ok(n) => assert_eq!(n.path, SONAME),
            Err(e) => panic!("{e}"),
        }
    }
}
