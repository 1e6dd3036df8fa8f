//! Keep a local copy of a watched collection and hand the whole copy to a callback after every
//! change (after the initial list as a whole, never a half-listed state).

use std::collections::BTreeMap;
use std::fmt::Debug;

use futures_util::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub type Snapshot<K> = BTreeMap<(String, String), K>;

fn key<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Watch `api` forever (reconnecting with back-off), calling `on_change` with the full set.
pub async fn mirror<K, F>(api: Api<K>, config: watcher::Config, mut on_change: F)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&Snapshot<K>),
    K::DynamicType: Default,
{
    let mut state: Snapshot<K> = BTreeMap::new();
    let mut listing: Option<Snapshot<K>> = None;
    let stream = watcher::watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(o)) => {
                state.insert(key(&o), o);
                on_change(&state);
            }
            Ok(Event::Delete(o)) => {
                state.remove(&key(&o));
                on_change(&state);
            }
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(o)) => {
                listing.get_or_insert_with(BTreeMap::new).insert(key(&o), o);
            }
            Ok(Event::InitDone) => {
                state = listing.take().unwrap_or_default();
                on_change(&state);
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch failed; retrying")
            }
        }
    }
}
