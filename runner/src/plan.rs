//! The barrier plan: which tasks take part in a job, where they run, and which of them this
//! launcher is. The Spark side writes it after its one `allGather`; local mode builds one.
//!
//! The schema is in the [crate docs](crate#the-plan). Parsing is strict: unknown fields, missing
//! fields, a key repeated in one object, wrong types and inconsistent values are all errors that
//! name what is wrong, found before anything is started. Errors quote at most
//! [`MAX_QUOTED`](crate::error::MAX_QUOTED) bytes of any value.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use ferrovod::error::{cut, quoted};

/// The plan version this launcher reads.
pub const PLAN_VERSION: u32 = 1;

/// Largest plan accepted, in bytes.
pub const MAX_PLAN_BYTES: usize = 16 << 20;

/// Most processes one job may have.
pub const MAX_PROCESSES: usize = 1 << 16;

/// A job as the launchers of all its tasks see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Schema version; must be [`PLAN_VERSION`].
    pub version: u32,
    /// Names the job; keys of the launchers' coordination in the store start with it.
    pub job_id: String,
    /// `host:port` of the rendezvous store, served by task 0's launcher.
    pub rendezvous: String,
    /// Which task this launcher is.
    pub task_index: usize,
    /// Every task of the job.
    pub tasks: Vec<Task>,
}

/// One task: a launcher on one host and the processes it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// 0..N-1, unique; ranks are numbered task by task in this order.
    pub index: usize,
    /// The task's host as the other tasks know it. Processes of tasks with the same host string
    /// count as one host for local and cross ranks.
    pub host: String,
    /// CUDA device ids of the task: one process per GPU. Empty on CPU.
    pub gpus: Vec<u32>,
    /// Processes to start when `gpus` is empty (ignored otherwise).
    pub slots: usize,
}

impl Task {
    /// How many processes this task starts.
    pub fn processes(&self) -> usize {
        if self.gpus.is_empty() { self.slots } else { self.gpus.len() }
    }
}

/// What is wrong with a plan. Every message names the offending field and value.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The text is not JSON.
    #[error("not valid JSON: {}", cut(&.0.to_string()))]
    Json(#[source] serde_json::Error),
    /// An object has the same key twice (JSON parsers disagree on which one counts, so a plan
    /// must not depend on it).
    #[error("{}: the key {} appears twice", cut(at), quoted(key))]
    DuplicateKey {
        /// The object: `plan`, `tasks[i]`, ...
        at: String,
        /// The repeated key.
        key: String,
    },
    /// A field is missing, unknown, or of the wrong type.
    #[error("{at}: {}", cut(detail))]
    Schema {
        /// Where: `plan`, or `tasks[i]`.
        at: String,
        /// serde's description (names the field).
        detail: String,
    },
    /// The plan has a version this launcher does not read.
    #[error("version {found} is not supported (this ferrovod-run reads version {PLAN_VERSION})")]
    Version {
        /// The plan's version.
        found: u32,
    },
    /// `tasks` is empty.
    #[error("tasks: the task list is empty (a job needs at least one task)")]
    NoTasks,
    /// Two tasks have the same index.
    #[error("tasks: task index {index} appears twice")]
    DuplicateTask {
        /// The repeated index.
        index: usize,
    },
    /// The task indices are not 0..N-1.
    #[error("tasks: the {count} task indices must be 0..{count} but {missing} is missing")]
    MissingTask {
        /// Number of tasks.
        count: usize,
        /// The lowest index not present.
        missing: usize,
    },
    /// `task_index` names no task of the plan.
    #[error("task_index {task_index} is not the index of a task in the plan (indices 0..{count})")]
    TaskIndex {
        /// The plan's `task_index`.
        task_index: usize,
        /// Number of tasks.
        count: usize,
    },
    /// A GPU id is not a non-negative integer.
    #[error("tasks[{position}].gpus: GPU id {value} is not a non-negative integer")]
    GpuId {
        /// Position of the task in the list.
        position: usize,
        /// The offending value, as JSON.
        value: String,
    },
    /// A task lists the same GPU twice.
    #[error("task {task}: GPU {gpu} is listed twice")]
    DuplicateGpu {
        /// The task's index.
        task: usize,
        /// The repeated id.
        gpu: u32,
    },
    /// Two tasks on one host were given the same GPU: their processes would share it.
    #[error("tasks {first} and {second} on host {host} were both given GPU {gpu}; each GPU of a host goes to one task")]
    SharedGpu {
        /// The host both tasks run on.
        host: String,
        /// The GPU id.
        gpu: u32,
        /// The lower task index.
        first: usize,
        /// The other task's index.
        second: usize,
    },
    /// The rendezvous address does not parse as `host:port`.
    #[error("rendezvous {} is not a host:port address: {detail}", quoted(addr))]
    Rendezvous {
        /// The plan's value.
        addr: String,
        /// What is wrong.
        detail: String,
    },
    /// Any other inconsistent value.
    #[error("{0}")]
    Invalid(String),
}

impl Plan {
    /// Parses and validates a plan.
    pub fn parse(text: &str) -> Result<Plan, PlanError> {
        let value = strict_json(text)?;
        let Value::Object(mut top) = value else {
            return Err(PlanError::Schema { at: "plan".into(), detail: "must be a JSON object".into() });
        };
        // Tasks are checked one by one so that errors can say which.
        let raw_tasks = top.remove("tasks");
        top.insert("tasks".into(), Value::Array(Vec::new()));
        let mut plan: Plan = serde_json::from_value(Value::Object(top))
            .map_err(|e| PlanError::Schema { at: "plan".into(), detail: e.to_string() })?;
        let raw_tasks = match raw_tasks {
            None => {
                return Err(PlanError::Schema { at: "plan".into(), detail: "missing field `tasks`".into() });
            }
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(PlanError::Schema {
                    at: "tasks".into(),
                    detail: format!("must be a list, not {}", cut(&other.to_string())),
                });
            }
        };
        for (position, raw) in raw_tasks.into_iter().enumerate() {
            if let Some(Value::Array(gpus)) = raw.get("gpus")
                && let Some(bad) = gpus.iter().find(|g| g.as_u64().is_none_or(|v| v > u32::MAX as u64))
            {
                return Err(PlanError::GpuId { position, value: cut(&bad.to_string()) });
            }
            let task: Task = serde_json::from_value(raw)
                .map_err(|e| PlanError::Schema { at: format!("tasks[{position}]"), detail: e.to_string() })?;
            plan.tasks.push(task);
        }
        plan.validate()?;
        plan.tasks.sort_by_key(|t| t.index);
        Ok(plan)
    }

    /// Checks everything serde cannot: versions, indices, GPUs, the address, sizes.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.version != PLAN_VERSION {
            return Err(PlanError::Version { found: self.version });
        }
        if self.job_id.is_empty() || self.job_id.len() > 256 {
            return Err(PlanError::Invalid(format!("job_id {} must have 1 to 256 characters", quoted(&self.job_id))));
        }
        parse_host_port(&self.rendezvous)
            .map_err(|detail| PlanError::Rendezvous { addr: self.rendezvous.clone(), detail })?;
        if self.tasks.is_empty() {
            return Err(PlanError::NoTasks);
        }
        let mut seen = BTreeSet::new();
        for t in &self.tasks {
            if !seen.insert(t.index) {
                return Err(PlanError::DuplicateTask { index: t.index });
            }
        }
        if let Some(missing) = (0..self.tasks.len()).find(|i| !seen.contains(i)) {
            return Err(PlanError::MissingTask { count: self.tasks.len(), missing });
        }
        if self.task_index >= self.tasks.len() {
            return Err(PlanError::TaskIndex { task_index: self.task_index, count: self.tasks.len() });
        }
        let mut total = 0usize;
        for t in &self.tasks {
            if t.host.is_empty() || t.host.len() > 255 || t.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(PlanError::Invalid(format!(
                    "task {}: host {} is not a host name or address",
                    t.index,
                    quoted(&t.host)
                )));
            }
            let mut gpus = BTreeSet::new();
            for &g in &t.gpus {
                if !gpus.insert(g) {
                    return Err(PlanError::DuplicateGpu { task: t.index, gpu: g });
                }
            }
            if t.processes() == 0 {
                return Err(PlanError::Invalid(format!(
                    "task {}: no processes to start (gpus is empty and slots is 0)",
                    t.index
                )));
            }
            total = total.saturating_add(t.processes());
        }
        // Tasks are numbered in index order here, so `first` is the lower index.
        let mut by_index: Vec<&Task> = self.tasks.iter().collect();
        by_index.sort_by_key(|t| t.index);
        let mut owner = std::collections::BTreeMap::new();
        for t in by_index {
            for &g in &t.gpus {
                if let Some(&first) = owner.get(&(t.host.as_str(), g)) {
                    return Err(PlanError::SharedGpu { host: t.host.clone(), gpu: g, first, second: t.index });
                }
                owner.insert((t.host.as_str(), g), t.index);
            }
        }
        if total > MAX_PROCESSES {
            return Err(PlanError::Invalid(format!("{total} processes in all; at most {MAX_PROCESSES} are supported")));
        }
        Ok(())
    }

    /// Builds and validates the plan of a job: the one builder of plans, used by local mode here
    /// and by the Spark tasks through the Python bindings. `rendezvous_host` is a name or an
    /// address (an IPv6 one is bracketed in the plan's `rendezvous`); `tasks` may come in any
    /// order and are sorted by index.
    pub fn build(
        job_id: impl Into<String>,
        rendezvous_host: &str,
        rendezvous_port: u16,
        task_index: usize,
        mut tasks: Vec<Task>,
    ) -> Result<Plan, PlanError> {
        let plan = Plan {
            version: PLAN_VERSION,
            job_id: job_id.into(),
            rendezvous: host_port(rendezvous_host, rendezvous_port),
            task_index,
            tasks: Vec::new(),
        };
        tasks.sort_by_key(|t| t.index);
        let plan = Plan { tasks, ..plan };
        plan.validate()?;
        Ok(plan)
    }

    /// The plan of a local job: one task on this host, `np` processes, one per GPU of `gpus`
    /// when given, the store at `rendezvous_host:rendezvous_port`.
    pub fn local(
        job_id: impl Into<String>,
        rendezvous_host: &str,
        rendezvous_port: u16,
        np: usize,
        gpus: Vec<u32>,
    ) -> Result<Plan, PlanError> {
        let task = Task { index: 0, host: "127.0.0.1".into(), gpus, slots: np };
        Plan::build(job_id, rendezvous_host, rendezvous_port, 0, vec![task])
    }

    /// The plan as the JSON the launcher reads (`--plan`).
    pub fn to_json(&self) -> String {
        // A plan is strings and integers: serialising it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// This launcher's task.
    pub fn my_task(&self) -> Option<&Task> {
        self.tasks.iter().find(|t| t.index == self.task_index)
    }

    /// Number of processes in the whole job.
    pub fn world_size(&self) -> usize {
        self.tasks.iter().map(Task::processes).sum()
    }
}

/// Parses `text` as JSON like `serde_json::from_str::<Value>`, but refuses an object that has a
/// key twice (serde_json keeps the last one silently), naming the object and the key.
fn strict_json(text: &str) -> Result<Value, PlanError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed =
        Strict { at: &At::Root, duplicate: &duplicate }.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some((at, key))) => Err(PlanError::DuplicateKey { at, key }),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(PlanError::Json(e)),
    }
}

/// Where a value sits in the plan, rendered only for an error: `plan`, `tasks[1]`,
/// `tasks[1].gpus`.
enum At<'a> {
    Root,
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => f.write_str("plan"),
            At::Key(At::Root, k) => f.write_str(&cut(k)),
            At::Key(parent, k) => write!(f, "{parent}.{}", cut(k)),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A JSON value read through serde, checking every object for repeated keys. The first one
/// found is left in `duplicate` (as where and which key) and stops the parse.
struct Strict<'a> {
    at: &'a At<'a>,
    duplicate: &'a RefCell<Option<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is never Null in practice.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let at = At::Index(self.at, out.len());
            match seq.next_element_seed(Strict { at: &at, duplicate: self.duplicate })? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let message = format!("{}: the key {} appears twice", self.at, quoted(&key));
                *self.duplicate.borrow_mut() = Some((self.at.to_string(), key));
                return Err(de::Error::custom(message));
            }
            let at = At::Key(self.at, &key);
            let value = map.next_value_seed(Strict { at: &at, duplicate: self.duplicate })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// `host:port`, with an IPv6 address bracketed (`[v6]:port`): the form [`parse_host_port`]
/// reads.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Splits `host:port` (`[v6]:port` for IPv6); the port must be 1..65535 and the host a plain
/// name or address. Nothing is resolved.
pub fn parse_host_port(addr: &str) -> Result<(String, u16), String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0 is not an address others can connect to".into());
        }
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("no :port".into());
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("port {} is not a number in 1..65535", quoted(port))),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.len() > 253 || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_') {
        return Err(format!("host {} is not a host name or IP address", quoted(host)));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(parse_host_port("10.0.0.1:29500").unwrap(), ("10.0.0.1".into(), 29500));
        assert_eq!(parse_host_port("[::1]:7").unwrap(), ("::1".into(), 7));
        assert_eq!(parse_host_port("node-3.cluster:80").unwrap(), ("node-3.cluster".into(), 80));
        for bad in ["10.0.0.1", "10.0.0.1:0", ":80", "host:x", "a b:1", "::1:80", "h:70000"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_gpu_is_given_to_one_task_per_host() {
        let plan = |hosts: [&str; 3]| {
            format!(
                r#"{{"version":1,"job_id":"j","rendezvous":"h:1","task_index":0,"tasks":[
                {{"index":2,"host":"{}","gpus":[1],"slots":0}},{{"index":0,"host":"{}","gpus":[0,1],"slots":0}},
                {{"index":1,"host":"{}","gpus":[2],"slots":0}}]}}"#,
                hosts[0], hosts[1], hosts[2]
            )
        };
        let err = Plan::parse(&plan(["a", "a", "a"])).unwrap_err();
        assert!(matches!(err, PlanError::SharedGpu { gpu: 1, first: 0, second: 2, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "tasks 0 and 2 on host a were both given GPU 1; each GPU of a host goes to one task"
        );
        // The same id on another host is another GPU.
        assert!(Plan::parse(&plan(["b", "a", "a"])).is_ok());
    }

    #[test]
    fn built_plans_read_back_as_they_were_built() {
        let tasks = vec![
            Task { index: 1, host: "10.0.0.2".into(), gpus: vec![], slots: 2 },
            Task { index: 0, host: "10.0.0.1".into(), gpus: vec![0, 1], slots: 2 },
        ];
        let plan = Plan::build("job-1", "10.0.0.1", 29400, 1, tasks).unwrap();
        assert_eq!(plan.rendezvous, "10.0.0.1:29400");
        assert_eq!(plan.tasks.iter().map(|t| t.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(Plan::parse(&plan.to_json()).unwrap(), plan);
        assert_eq!(Plan::build("j", "fe80::1", 7, 0, vec![plan.tasks[0].clone()]).unwrap().rendezvous, "[fe80::1]:7");
        let err = Plan::build("j", "h", 7, 3, plan.tasks.clone()).unwrap_err();
        assert!(matches!(err, PlanError::TaskIndex { task_index: 3, count: 2 }), "{err}");
        assert_eq!(Plan::local("j", "127.0.0.1", 9, 4, vec![]).unwrap().world_size(), 4);
    }

    #[test]
    fn a_repeated_key_is_refused_by_name() {
        let text = r#"{"version":1,"job_id":"j","rendezvous":"h:1","task_index":0,"version":2,"tasks":[]}"#;
        let err = Plan::parse(text).unwrap_err();
        assert!(matches!(&err, PlanError::DuplicateKey { at, key } if at == "plan" && key == "version"), "{err}");
        assert_eq!(err.to_string(), "plan: the key \"version\" appears twice");
        let text = r#"{"version":1,"job_id":"j","rendezvous":"h:1","task_index":0,"tasks":[
            {"index":0,"host":"a","gpus":[],"slots":1},{"index":1,"host":"a","gpus":[],"slots":1,"host":"b"}]}"#;
        assert_eq!(Plan::parse(text).unwrap_err().to_string(), "tasks[1]: the key \"host\" appears twice");
        // Nested anywhere, even where the schema would refuse the field anyway.
        let text = r#"{"version":1,"x":{"y":[{"z":1,"z":2}]}}"#;
        assert_eq!(Plan::parse(text).unwrap_err().to_string(), "x.y[0]: the key \"z\" appears twice");
        // Equal keys in different objects are fine; so is a well-formed plan.
        let text = r#"{"version":1,"job_id":"j","rendezvous":"h:1","task_index":0,"tasks":[
            {"index":0,"host":"a","gpus":[0],"slots":0}]}"#;
        assert!(Plan::parse(text).is_ok());
        assert!(matches!(Plan::parse(r#"{"a":1} x"#), Err(PlanError::Json(_))));
        assert!(matches!(Plan::parse("[[[["), Err(PlanError::Json(_))));
        assert!(matches!(Plan::parse(&"[".repeat(100_000)), Err(PlanError::Json(_))), "deep nesting is an error");
    }

    #[test]
    fn huge_values_are_cut_in_errors() {
        let big = "A".repeat(1 << 20);
        let base = |field: &str, value: &str| {
            let mut fields = vec![
                ("version", "1".to_string()),
                ("job_id", "\"j\"".to_string()),
                ("rendezvous", "\"h:1\"".to_string()),
                ("task_index", "0".to_string()),
                ("tasks", r#"[{"index":0,"host":"a","gpus":[],"slots":1}]"#.to_string()),
            ];
            match fields.iter_mut().find(|(k, _)| *k == field) {
                Some(f) => f.1 = value.to_string(),
                None => fields.push((field, value.to_string())),
            }
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        };
        let s = format!("\"{big}\"");
        let cases = [
            base("version", &s),
            base("job_id", &s),
            base("rendezvous", &s),
            base("rendezvous", &format!("\"h:{}\"", "9".repeat(1 << 20))),
            base("tasks", &s),
            base("tasks", &format!(r#"[{{"index":0,"host":{s},"gpus":[],"slots":1}}]"#)),
            base("tasks", &format!(r#"[{{"index":0,"host":"a","gpus":[{s}],"slots":0}}]"#)),
            base(&big, "1"),
            format!(r#"{{"{big}":1,"{big}":2}}"#),
        ];
        for text in cases {
            let msg = Plan::parse(&text).unwrap_err().to_string();
            assert!(msg.len() < 1000, "{} bytes: {}", msg.len(), &msg[..1000]);
            assert!(msg.contains("bytes cut"), "{msg}");
        }
    }

    /// Found by `fuzz/fuzz_targets/plan.rs`: each key on the path to a repeated key was short
    /// enough to be quoted whole, but the path of several such keys made a message of any
    /// length (the fuzzer's input nested `[[[[{` and three keys of about 300 bytes).
    #[test]
    fn the_path_to_a_repeated_key_is_cut_in_errors() {
        let key = |c: char| format!("\"{}\"", c.to_string().repeat(330));
        let text = format!(r#"[[[[{{{}:{{{}:{{{}:{{"k":1,"k":2}}}}}}}}]]]]"#, key('a'), key('b'), key('c'));
        let err = Plan::parse(&text).unwrap_err();
        assert!(matches!(&err, PlanError::DuplicateKey { key, .. } if key == "k"), "{err}");
        let msg = err.to_string();
        assert!(msg.len() < 1000, "{} bytes: {msg}", msg.len());
        assert!(msg.starts_with("plan[0][0][0][0].aaa") && msg.ends_with("ccc: the key \"k\" appears twice"), "{msg}");
        assert!(msg.contains("bytes cut"), "{msg}");
    }

    #[test]
    fn control_characters_in_a_value_do_not_lengthen_the_error() {
        // Found by the plan fuzzer: a quoted value of DEL characters grew sixfold in the message.
        let rendezvous = format!("h{}:1", "\u{7f}".repeat(300));
        let text = format!(
            r#"{{"version":1,"job_id":"j","rendezvous":"{rendezvous}","task_index":0,"tasks":[{{"index":0,"host":"a","gpus":[],"slots":1}}]}}"#
        );
        let msg = Plan::parse(&text).unwrap_err().to_string();
        assert!(msg.len() < 1000, "{} bytes: {msg}", msg.len());
        assert!(msg.contains("bytes cut"), "{msg}");
    }

    #[test]
    fn tasks_are_sorted_by_index() {
        let text = r#"{"version":1,"job_id":"j","rendezvous":"h:1","task_index":1,"tasks":[
            {"index":1,"host":"b","gpus":[],"slots":1},{"index":0,"host":"a","gpus":[3],"slots":0}]}"#;
        let p = Plan::parse(text).unwrap();
        assert_eq!(p.tasks.iter().map(|t| t.index).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(p.my_task().map(|t| t.host.as_str()), Some("b"));
        assert_eq!(p.world_size(), 2);
    }
}
