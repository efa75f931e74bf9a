//! Entry points for the fuzz targets in `fuzz/` (built only with `--cfg fuzzing`, as
//! `cargo fuzz` does): crate-private parsers reached with arbitrary input.

use std::sync::LazyLock;

use crate::config::Config;

/// A minimal configuration, for its correlation rules and route.
static CONFIG: LazyLock<Option<Config>> = LazyLock::new(|| {
    Config::from_toml_str(
        "[[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:5678\"\n\
         source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n",
    )
    .ok()
});

/// Correlates a request of `path` and `headers` (trace id, workflow from the n8n path rules,
/// resume execution id): must never panic, whatever the input.
pub fn correlate(path: &str, headers: &http::HeaderMap) -> Option<String> {
    let cfg = CONFIG.as_ref()?;
    let route = cfg.routes.first()?;
    let c = crate::proxy::correlate::correlate(&cfg.correlation, route, headers, path);
    Some(format!(
        "{}|{}|{:?}",
        c.trace_id, c.workflow_id, c.n8n_execution_id
    ))
}
