//! [`FaultStore`]: an [`ObjectStore`] wrapper that injects errors, latency
//! and corrupted reads, and counts calls.

mod body;
mod rule;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use body::BodyFaults;
use rule::{Action, list_key};
pub use rule::{ErrorKind, Fault, InjectedFault, Op};

/// Identifies a rule added with [`FaultStore::inject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultId(usize);

/// Wraps an [`ObjectStore`] and misbehaves on purpose, following the
/// [`Fault`] rules it is given; counts every call per [`Op`].
///
/// Clones share rules and counters, so a test can keep one handle while the
/// code under test owns another (as `Arc<dyn ObjectStore>`):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use object_store::{ObjectStore, ObjectStoreExt, memory::InMemory, path::Path};
/// use warmspare_testkit::{Fault, FaultStore, Op};
///
/// let faults = FaultStore::new(Arc::new(InMemory::new()));
/// let store: Arc<dyn ObjectStore> = Arc::new(faults.clone());
/// let path = Path::from("a/b");
/// store.put(&path, "hello".into()).await.unwrap();
///
/// faults.inject(Fault::error(Op::Get).once());
/// assert!(store.get(&path).await.is_err());
/// assert!(store.get(&path).await.is_ok());
/// assert_eq!(faults.calls(Op::Get), 2);
/// # }
/// ```
///
/// Faults apply in the order they were injected: latency adds up, the first
/// error that fires wins (the inner store is then not called), and data
/// faults change GET bodies as they stream. Every rule that matches and
/// fires counts as fired (see [`FaultStore::fired`]).
#[derive(Debug, Clone)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    rules: Vec<RuleState>,
    calls: [u64; Op::ALL.len()],
    rng: StdRng,
}

#[derive(Debug)]
struct RuleState {
    fault: Fault,
    skipped: u64,
    fired: u64,
    removed: bool,
}

/// What the rules decided for one call.
#[derive(Debug, Default)]
struct Decision {
    latency: Duration,
    error: Option<object_store::Error>,
    body: BodyFaults,
}

impl Decision {
    /// Sleeps the injected latency, then returns the injected error.
    async fn apply(&mut self) -> Result<()> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        match self.error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl FaultStore {
    /// Wraps `inner` with no faults and a fixed seed (0).
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultStore {
            inner,
            state: Arc::new(Mutex::new(State {
                rules: Vec::new(),
                calls: [0; Op::ALL.len()],
                rng: StdRng::seed_from_u64(0),
            })),
        }
    }

    /// Reseeds the generator behind [`Fault::probability`].
    pub fn with_seed(self, seed: u64) -> Self {
        self.lock().rng = StdRng::seed_from_u64(seed);
        self
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Adds a rule; it applies to calls from now on.
    pub fn inject(&self, fault: Fault) -> FaultId {
        let mut state = self.lock();
        state.rules.push(RuleState {
            fault,
            skipped: 0,
            fired: 0,
            removed: false,
        });
        FaultId(state.rules.len() - 1)
    }

    /// Disables one rule (its [`FaultStore::fired`] count stays readable).
    pub fn remove(&self, id: FaultId) {
        if let Some(rule) = self.lock().rules.get_mut(id.0) {
            rule.removed = true;
        }
    }

    /// Disables every rule: the store behaves like the inner one again.
    pub fn clear(&self) {
        for rule in &mut self.lock().rules {
            rule.removed = true;
        }
    }

    /// How often a rule has fired.
    pub fn fired(&self, id: FaultId) -> u64 {
        self.lock().rules.get(id.0).map_or(0, |r| r.fired)
    }

    /// How many calls of this kind were made (including failed ones).
    pub fn calls(&self, op: Op) -> u64 {
        self.lock().calls[op.index()]
    }

    /// All non-zero call counts.
    pub fn call_counts(&self) -> Vec<(Op, u64)> {
        let state = self.lock();
        Op::ALL
            .iter()
            .map(|&op| (op, state.calls[op.index()]))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Sets every call count back to zero.
    pub fn reset_calls(&self) {
        self.lock().calls = [0; Op::ALL.len()];
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and evaluates the rules for it.
    fn decide(&self, op: Op, paths: &[&str]) -> Decision {
        let mut state = self.lock();
        state.calls[op.index()] += 1;
        let mut decision = Decision::default();
        let State { rules, rng, .. } = &mut *state;
        for rule in rules.iter_mut() {
            if rule.removed || !rule.fault.matches(op, paths) {
                continue;
            }
            if rule.skipped < rule.fault.skip {
                rule.skipped += 1;
                continue;
            }
            if rule.fault.times.is_some_and(|t| rule.fired >= t) {
                continue;
            }
            if let Some(p) = rule.fault.probability
                && !rng.random_bool(p)
            {
                continue;
            }
            match &rule.fault.action {
                Action::Error(kind) => {
                    if decision.error.is_some() {
                        continue;
                    }
                    let fault = InjectedFault {
                        op,
                        path: paths.first().map(|p| (*p).to_owned()).unwrap_or_default(),
                    };
                    decision.error = Some(fault.into_error(*kind));
                }
                Action::Latency(d) => decision.latency += *d,
                Action::Truncate { after, error } => decision.body.add_truncate(*after, *error),
                Action::FlipByte { offset } => decision.body.flips.push(*offset),
            }
            rule.fired += 1;
        }
        decision
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.decide(Op::Put, &[location.as_ref()]).apply().await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.decide(Op::PutMultipart, &[location.as_ref()])
            .apply()
            .await?;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultUpload {
            upload,
            store: self.clone(),
            location: location.to_string(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let mut decision = self.decide(op, &[location.as_ref()]);
        decision.apply().await?;
        let mut result = self.inner.get_opts(location, options).await?;
        if op == Op::Head || decision.body.is_empty() {
            return Ok(result);
        }
        // Turn any payload (a local file, too) into a stream, then corrupt it.
        let payload = std::mem::replace(
            &mut result.payload,
            GetResultPayload::Stream(stream::empty().boxed()),
        );
        let plain = GetResult {
            payload,
            meta: result.meta.clone(),
            range: result.range.clone(),
            attributes: Default::default(),
            extensions: Default::default(),
        }
        .into_stream();
        let fault = InjectedFault {
            op,
            path: location.to_string(),
        };
        result.payload = GetResultPayload::Stream(body::corrupt(plain, decision.body, fault));
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.decide(Op::Get, &[location.as_ref()]).apply().await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        let checked = locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.decide(Op::Delete, &[location.as_ref()])
                        .apply()
                        .await?;
                    Ok(location)
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.list(prefix);
        self.faulty_list(prefix, inner)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.list_with_offset(prefix, offset);
        self.faulty_list(prefix, inner)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.decide(Op::List, &[&list_key(prefix)]).apply().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.decide(Op::Copy, &[to.as_ref(), from.as_ref()])
            .apply()
            .await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.decide(Op::Rename, &[to.as_ref(), from.as_ref()])
            .apply()
            .await?;
        self.inner.rename_opts(from, to, options).await
    }
}

impl FaultStore {
    /// Decides when the list is created (so calls are counted even if the
    /// stream is never polled) and applies latency/error on first poll.
    fn faulty_list(
        &self,
        prefix: Option<&Path>,
        inner: BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let mut decision = self.decide(Op::List, &[&list_key(prefix)]);
        stream::once(async move {
            match decision.apply().await {
                Ok(()) => inner,
                Err(err) => stream::once(async move { Err(err) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

/// A multipart upload whose parts and completion can fail.
#[derive(Debug)]
struct FaultUpload {
    upload: Box<dyn MultipartUpload>,
    store: FaultStore,
    location: String,
}

#[async_trait]
impl MultipartUpload for FaultUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let mut decision = self.store.decide(Op::PutPart, &[&self.location]);
        if decision.error.is_some() {
            // The part never reaches the inner store.
            return Box::pin(async move { decision.apply().await });
        }
        let put = self.upload.put_part(data);
        Box::pin(async move {
            decision.apply().await?;
            put.await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.store
            .decide(Op::CompleteMultipart, &[&self.location])
            .apply()
            .await?;
        self.upload.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests;
