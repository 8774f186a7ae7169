//! `GET /reload`: the last config reload (when, trigger, result, errors)
//! and the restart-only settings that changed and wait for a restart, as
//! JSON (see `crate::lifecycle::reload::ReloadStatus`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::AdminState;
use super::routes::json;

pub(super) fn route(state: &AdminState) -> Response<Full<Bytes>> {
    json(&state.lifecycle.status())
}
