//! Core errors on their way to Python: each error variant mapped, in one place, to its class of
//! `ferrovod.exceptions` (the hierarchy is defined there, in Python).

use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{PyErr, intern};

/// Declares a handle on one class of `ferrovod.exceptions`, which defines the hierarchy in
/// Python (each class also subclasses the builtin Horovod raises in its place, which a class
/// made here could not). `X::new_err(msg)` builds the exception the way pyo3's own do.
macro_rules! python_exception {
    ($($name:ident),* $(,)?) => {$(
        pub(crate) struct $name;

        impl $name {
            pub(crate) fn new_err(msg: impl Into<String>) -> PyErr {
                let msg = msg.into();
                Python::attach(|py| match class(py, stringify!($name)) {
                    Ok(cls) => PyErr::from_type(cls, msg),
                    Err(e) => e,
                })
            }
        }
    )*};
}

python_exception!(
    ConfigError,
    InvalidArgumentError,
    BootstrapError,
    CollectiveError,
    CollectiveTimeoutError,
    MismatchError,
    StalledError,
    UnsupportedError,
    NotInitializedError,
);

/// The class `name` of `ferrovod.exceptions` (imported once; `sys.modules` keeps it).
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = py.import(intern!(py, "ferrovod.exceptions"))?;
    Ok(module.getattr(name)?.cast_into::<PyType>()?)
}

/// A core error on its way to Python (the orphan rule keeps `From` off the foreign type).
pub(crate) struct PyFerrovodError(pub ferrovod::Error);

impl From<ferrovod::Error> for PyFerrovodError {
    fn from(e: ferrovod::Error) -> Self {
        PyFerrovodError(e)
    }
}

impl From<PyFerrovodError> for PyErr {
    /// The class follows the error's kind, whichever rank saw it first: a dead peer is a
    /// `CollectiveError`, a silent one a `CollectiveTimeoutError`, disagreeing ranks a
    /// `MismatchError`. The exception carries `rank` (the rank raising it), `blamed_ranks`
    /// (the dead, silent or disagreeing peers), `op` (what was running: `allreduce`, ...,
    /// `negotiation`, `join`) and `seq` (the call's sequence number on the wire, if it got
    /// one), so callers need not parse the message.
    fn from(e: PyFerrovodError) -> PyErr {
        use ferrovod::Error as E;
        use ferrovod::error::Fault;
        let e = e.0;
        let msg = e.to_string();
        let err = match (&e, e.fault()) {
            (E::Config { .. }, _) => ConfigError::new_err(msg),
            (E::InvalidArgument { .. }, _) => InvalidArgumentError::new_err(msg),
            (E::Bootstrap { .. }, _) => BootstrapError::new_err(msg),
            (E::Unsupported { .. }, _) => UnsupportedError::new_err(msg),
            (E::Stalled { .. }, _) | (_, Some(Fault::Stall)) => StalledError::new_err(msg),
            (E::EngineStopped { .. }, _) => NotInitializedError::new_err(msg),
            (_, Some(Fault::Mismatch)) => MismatchError::new_err(msg),
            (_, Some(Fault::Timeout)) => CollectiveTimeoutError::new_err(msg),
            _ => CollectiveError::new_err(msg),
        };
        Python::attach(|py| {
            let value = err.value(py);
            // Plain attributes on a fresh exception instance: setting them cannot fail.
            let _ = value.setattr("rank", e.rank());
            let _ = value.setattr("blamed_ranks", e.culprits());
            let _ = value.setattr("op", e.operation().map(|o| o.name()));
            let _ = value.setattr("seq", e.operation().and_then(|o| o.call()).map(|c| c.seq));
        });
        err
    }
}
