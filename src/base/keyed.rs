//! Shared values created on first use and found again by the same key
//! (config names): the state that outlives a reload, because the next
//! runtime asks for the same names. Looked up when a runtime is built (or a
//! backend set changes), never per request.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct Keyed<K, V>(Mutex<HashMap<K, Arc<V>>>);

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Keyed(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V> Keyed<K, V> {
    /// The value of `key`, made by `make` the first time.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_insert_with(|| Arc::new(make())).clone()
    }

    /// The value of `key`, its default the first time.
    pub fn get_or_default(&self, key: K) -> Arc<V>
    where
        V: Default,
    {
        self.get_or_insert_with(key, V::default)
    }
}

#[cfg(test)]
mod tests {
    use super::Keyed;
    use std::sync::Arc;

    #[test]
    fn the_same_key_finds_the_same_value() {
        let k: Keyed<String, u32> = Keyed::default();
        let a = k.get_or_insert_with("a".into(), || 7);
        let again = k.get_or_insert_with("a".into(), || 9);
        assert!(Arc::ptr_eq(&a, &again) && *again == 7);
        assert!(!Arc::ptr_eq(&a, &k.get_or_default("b".into())));
    }
}
