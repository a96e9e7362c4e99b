//! One plugin call through wasmtime, without the network: the cost the host
//! adds to every RPC; and one rebuild of an instance (instantiate + `init`),
//! what a plugin fault costs before the next event is served. Needs
//! `plugins/echo.wasm` (`make plugins`).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use wasmcluster::auth::AuthEngine;
use wasmcluster::plugins::{
    PluginEngine, PluginLimits, PluginOptions, Socket, WorkerPlugins, load_dir,
};
use wasmcluster::services::HostServices;

fn plugin_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let echo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/echo.wasm");
    assert!(
        echo.exists(),
        "{} is missing: run `make plugins`",
        echo.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&echo, dir.path().join("echo.wasm")).unwrap();

    let engine = PluginEngine::new(None).unwrap();
    let services = Arc::new(HostServices::new(Arc::new(AuthEngine::with_random_key(60))));
    let options = PluginOptions::new(PluginLimits::default());
    let (set, refused) = runtime
        .block_on(load_dir(&engine, dir.path(), &options, &services))
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    let set = Arc::new(set);
    let plugins = Rc::new(runtime.block_on(WorkerPlugins::start(set.clone(), services.clone())));
    let socket = Socket {
        id: "benchbenchbenchbench".into(),
        auth_token: None,
        remote_address: "127.0.0.1:1".into(),
    };

    let mut group = c.benchmark_group("plugin_call");
    group.bench_function("on_invoke echo, no data", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(plugins.rpc(&socket, "echo", None, true).await) })
    });
    let data = r#"{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    group.bench_function("on_invoke echo, 64-byte data", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(plugins.rpc(&socket, "echo", Some(data), true).await) })
    });
    let echo_plugin = set.plugins[0].clone();
    group.bench_function("rebuild: instantiate + init", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(echo_plugin.instantiate(services.clone()).await.is_ok()) })
    });
    group.finish();
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
