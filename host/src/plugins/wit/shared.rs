//! What the released versions have in common, written once: the `types`
//! interface mapped onto the host's own types, and the host functions of
//! 0.1.0, which every later version keeps. Macros, because each version's
//! bindings generate traits of their own that the same code implements.

/// The `types` interface of a version, mapped onto the host's own types
/// (see [`crate::plugins::types`]). The items below the re-export are what
/// the generated bindings expect of an imported interface; `types` has no
/// functions, so linking it only declares the (empty) instance.
macro_rules! types_interface {
    ($instance:literal) => {
        #[allow(missing_docs, unreachable_pub)]
        pub mod types {
            pub use crate::plugins::types::*;
            use wasmtime::component::{HasData, Linker};

            pub trait Host {}
            impl<T: Host + ?Sized> Host for &mut T {}
            pub trait HostWithStore<T>: HasData {}
            impl<H: ?Sized + HasData, T> HostWithStore<T> for H {}

            pub fn add_to_linker<T, D>(
                linker: &mut Linker<T>,
                _host_getter: fn(&mut T) -> D::Data<'_>,
            ) -> wasmtime::Result<()>
            where
                D: HostWithStore<T>,
                for<'a> D::Data<'a>: Host,
                T: 'static,
            {
                linker.instance($instance)?;
                Ok(())
            }
        }

        impl types::Host for HostState {}
    };
}

/// The host functions of 0.1.0, forwarded to [`HostState`](super::HostState);
/// expanded inside a version's `host::Host` impl.
macro_rules! host_functions_of_0_1 {
    () => {
        fn publish(&mut self, channel: String, data: String) -> Result<(), HostError> {
            HostState::publish(self, &channel, &data)
        }

        fn transmit(
            &mut self,
            socket_id: String,
            event: String,
            data: Option<String>,
        ) -> Result<(), HostError> {
            HostState::transmit(self, socket_id, &event, data.as_deref())
        }

        fn set_auth_token(&mut self, socket_id: String, claims: String) -> Result<(), HostError> {
            HostState::set_auth_token(self, socket_id, &claims)
        }

        fn deauthenticate(&mut self, socket_id: String) -> Result<(), HostError> {
            HostState::deauthenticate(self, socket_id)
        }

        fn disconnect(
            &mut self,
            socket_id: String,
            code: u16,
            reason: String,
        ) -> Result<(), HostError> {
            HostState::disconnect(self, socket_id, code, reason)
        }

        fn kick_out(
            &mut self,
            socket_id: String,
            channel: String,
            message: Option<String>,
        ) -> Result<(), HostError> {
            HostState::kick_out(self, socket_id, channel, message)
        }

        fn subscriptions(&mut self, socket_id: String) -> Result<Vec<String>, HostError> {
            HostState::subscriptions(self, &socket_id)
        }

        async fn kv_get(&mut self, key: String) -> Result<Option<String>, HostError> {
            HostState::kv_get(self, &key).await
        }

        async fn kv_set(&mut self, key: String, value: String) -> Result<(), HostError> {
            HostState::kv_set(self, key, value).await
        }

        async fn kv_delete(&mut self, key: String) -> Result<bool, HostError> {
            HostState::kv_delete(self, key).await
        }

        async fn kv_incr(&mut self, key: String, delta: i64) -> Result<i64, HostError> {
            HostState::kv_incr(self, key, delta).await
        }

        fn log(&mut self, level: LogLevel, message: String) {
            HostState::log(self, level, &message)
        }

        fn now_ms(&mut self) -> u64 {
            HostState::now_ms()
        }

        fn set_timer(&mut self, id: String, delay_ms: u64, repeat: bool) -> Result<(), HostError> {
            HostState::set_timer(self, id, delay_ms, repeat)
        }
    };
}
