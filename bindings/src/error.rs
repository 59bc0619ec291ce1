//! The Python exception hierarchy (`FerrovodError` and its subclasses), created here and mapped
//! per error variant in one place.

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};

create_exception!(_ferrovod, FerrovodError, PyException, "Base class of every error ferrovod raises.");
create_exception!(_ferrovod, ConfigError, FerrovodError, "A FERROVOD_* variable or argument is missing or malformed.");
create_exception!(
    _ferrovod,
    InvalidArgumentError,
    FerrovodError,
    "An argument cannot work: unsupported dtype, non-contiguous or read-only array, bad root or splits."
);
create_exception!(
    _ferrovod,
    BootstrapError,
    FerrovodError,
    "Joining the job failed: store, authentication, rendezvous."
);
create_exception!(
    _ferrovod,
    CollectiveError,
    FerrovodError,
    "A collective failed: a peer died or closed its connection, or another rank reported a failure."
);
create_exception!(
    _ferrovod,
    CollectiveTimeoutError,
    CollectiveError,
    "A peer sent nothing within FERROVOD_TIMEOUT (named so as not to shadow the builtin TimeoutError)."
);
create_exception!(
    _ferrovod,
    MismatchError,
    FerrovodError,
    "Ranks called a collective with different arguments (dtype, shape, op, root, kind)."
);
create_exception!(
    _ferrovod,
    StalledError,
    FerrovodError,
    "Tensors waited for other ranks past FERROVOD_STALL_TIMEOUT."
);
create_exception!(
    _ferrovod,
    NotInitializedError,
    FerrovodError,
    "ferrovod is not initialized (call init()), or was shut down, or its engine stopped."
);
create_exception!(_ferrovod, LaunchError, FerrovodError, "ferrovod-run could not start or supervise the job.");
create_exception!(
    _ferrovod,
    RankFailedError,
    FerrovodError,
    "A rank of a job started by ferrovod.run or ferrovod.spark failed; carries its rank and traceback."
);

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
            (E::Stalled { .. }, _) => StalledError::new_err(msg),
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

/// Registers the exception classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<FerrovodError>();
    // Defaults for errors raised without a core error behind them (argument checks in the
    // bindings): the attributes exist on every ferrovod exception.
    base.setattr("rank", py.None())?;
    base.setattr("blamed_ranks", pyo3::types::PyTuple::empty(py))?;
    base.setattr("op", py.None())?;
    base.setattr("seq", py.None())?;
    m.add("FerrovodError", base)?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("InvalidArgumentError", py.get_type::<InvalidArgumentError>())?;
    m.add("BootstrapError", py.get_type::<BootstrapError>())?;
    m.add("CollectiveError", py.get_type::<CollectiveError>())?;
    m.add("CollectiveTimeoutError", py.get_type::<CollectiveTimeoutError>())?;
    m.add("MismatchError", py.get_type::<MismatchError>())?;
    m.add("StalledError", py.get_type::<StalledError>())?;
    m.add("NotInitializedError", py.get_type::<NotInitializedError>())?;
    m.add("LaunchError", py.get_type::<LaunchError>())?;
    m.add("RankFailedError", py.get_type::<RankFailedError>())?;
    Ok(())
}
