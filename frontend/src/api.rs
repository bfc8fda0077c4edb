//! The browser's client of the server's `/api`: JSON requests with the
//! optional bearer token, errors as [`ApiErr`] (the server's `ApiError`, or a
//! network failure worded for a person), URLs of downloads, and the run event
//! stream (`EventSource`).
//!
//! The token: a page opened with `?token=T` stores `T` in localStorage (an
//! empty `?token=` forgets it); every request then sends
//! `Authorization: Bearer T`. Links and `EventSource` cannot send headers, so
//! with a token downloads go through [`download`] and run pages poll instead
//! of streaming.

use std::future::Future;

use amortize_shared::api::{ApiError, RunEvent};
use gloo_net::http::{Request, RequestBuilder, Response};
use leptos::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

const TOKEN_KEY: &str = "amortize-token";

/// A failed request: what to tell the user, and the request field it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiErr {
    pub message: String,
    /// `ApiError.field` as the server sent it (e.g. `lr`, `config.lr`, `task.stop`).
    pub field: Option<String>,
    /// HTTP status (0: no response).
    pub status: u16,
}

impl ApiErr {
    pub fn new(message: impl Into<String>) -> Self {
        ApiErr { message: message.into(), field: None, status: 0 }
    }

    /// The field without its table prefix (`config.lr` → `lr`, `task.stop` → `stop`).
    pub fn field_name(&self) -> Option<&str> {
        self.field.as_deref().map(|f| {
            ["config.", "task_options.", "task.", "decoding."].iter().find_map(|p| f.strip_prefix(p)).unwrap_or(f)
        })
    }
}

/// Where a server error goes in a sampling form (compare, infill): the
/// control its `field` names, else `"submit"` (next to the submit button).
pub fn error_slot_of(e: &ApiErr) -> &'static str {
    match e.field_name() {
        Some("prompts" | "prompt" | "beginning" | "end") => "text",
        Some("runs" | "run") => "sources",
        Some(_) if e.field.as_deref().is_some_and(|f| f.starts_with("decoding")) => "decoding",
        _ => "submit",
    }
}

impl std::fmt::Display for ApiErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of a fetch that may still be on its way (`None`).
pub type Loaded<T> = Option<Result<T, ApiErr>>;

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok().flatten()
}

/// Reads `?token=` from the page's URL (once, at start) into localStorage.
pub fn init_token() {
    let Some(window) = web_sys::window() else { return };
    let search = window.location().search().unwrap_or_default();
    if let Some(t) = query_param(&search, "token") {
        if let Some(s) = storage() {
            let _ = if t.is_empty() { s.remove_item(TOKEN_KEY) } else { s.set_item(TOKEN_KEY, &t) };
        }
    }
}

/// The bearer token, if one was given.
pub fn token() -> Option<String> {
    storage()?.get_item(TOKEN_KEY).ok().flatten().filter(|t| !t.is_empty())
}

/// Decoded value of `name` in a `?a=b&c=d` string.
fn query_param(search: &str, name: &str) -> Option<String> {
    search.trim_start_matches('?').split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| decode(v))
    })
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    js_sys::encode_uri_component(s).as_string().unwrap_or_default()
}

/// Decodes a query value (`+` is a space).
pub fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    js_sys::decode_uri_component(&s).ok().and_then(|v| v.as_string()).unwrap_or(s)
}

/// Writes `url` in the address bar without a navigation (shareable inputs).
pub fn replace_url(url: &str) {
    if let Some(h) = web_sys::window().and_then(|w| w.history().ok()) {
        let _ = h.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(url));
    }
}

/// `/api/runs/{id}` plus `rest`.
pub fn run_path(id: &str, rest: &str) -> String {
    format!("/api/runs/{}{rest}", encode(id))
}

fn authorized(req: RequestBuilder) -> RequestBuilder {
    match token() {
        Some(t) => req.header("Authorization", &format!("Bearer {t}")),
        None => req,
    }
}

fn network(e: gloo_net::Error) -> ApiErr {
    ApiErr::new(format!("Cannot reach the server ({e}). Is `amortize serve` running?"))
}

async fn read<T: DeserializeOwned>(resp: Response) -> Result<T, ApiErr> {
    let status = resp.status();
    if resp.ok() {
        return resp.json::<T>().await.map_err(|e| ApiErr { message: format!("Unexpected answer from the server: {e}"), field: None, status });
    }
    Err(read_error(resp).await)
}

/// The `ApiError` of a failed response, or its status and text.
async fn read_error(resp: Response) -> ApiErr {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let hint = if status == 401 { " — open the page with ?token=… to sign in" } else { "" };
    match serde_json::from_str::<ApiError>(&text) {
        Ok(e) => ApiErr { message: format!("{}{hint}", e.error), field: e.field, status },
        Err(_) => {
            let body = text.trim();
            let what = if body.is_empty() || body.len() > 300 { resp.status_text() } else { body.to_string() };
            ApiErr { message: format!("Server answered {status}: {what}{hint}"), field: None, status }
        }
    }
}

/// Saves `path` as `filename` through a fetch that sends the token (a plain
/// link cannot send the `Authorization` header).
pub async fn download(path: &str, filename: &str) -> Result<(), ApiErr> {
    let resp = authorized(Request::get(path)).send().await.map_err(network)?;
    if !resp.ok() {
        return Err(read_error(resp).await);
    }
    let bytes = resp.binary().await.map_err(network)?;
    save(&bytes, filename)
}

/// Offers `bytes` to the user as a file named `filename`.
pub fn save(bytes: &[u8], filename: &str) -> Result<(), ApiErr> {
    let js = |e: wasm_bindgen::JsValue| ApiErr::new(format!("Could not save the file: {e:?}"));
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(js)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(js)?;
    let document = web_sys::window().and_then(|w| w.document()).ok_or_else(|| ApiErr::new("no document"))?;
    let a: web_sys::HtmlAnchorElement = document.create_element("a").map_err(js)?.unchecked_into();
    a.set_href(&url);
    a.set_download(filename);
    a.click();
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

/// `GET path` → JSON.
pub async fn get<T: DeserializeOwned>(path: &str) -> Result<T, ApiErr> {
    let resp = authorized(Request::get(path)).send().await.map_err(network)?;
    read(resp).await
}

/// `POST path` with a JSON body → JSON.
pub async fn post<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiErr> {
    let req = authorized(Request::post(path)).json(body).map_err(|e| ApiErr::new(e.to_string()))?;
    read(req.send().await.map_err(network)?).await
}

/// `PATCH path` with a JSON body → JSON.
pub async fn patch<B: Serialize, T: DeserializeOwned>(path: &str, body: &B) -> Result<T, ApiErr> {
    let req = authorized(Request::patch(path)).json(body).map_err(|e| ApiErr::new(e.to_string()))?;
    read(req.send().await.map_err(network)?).await
}

/// `POST path` without a body → JSON.
pub async fn post_empty<T: DeserializeOwned>(path: &str) -> Result<T, ApiErr> {
    read(authorized(Request::post(path)).send().await.map_err(network)?).await
}

/// `DELETE path`; any 2xx is success.
pub async fn delete(path: &str) -> Result<(), ApiErr> {
    let resp = authorized(Request::delete(path)).send().await.map_err(network)?;
    if resp.ok() {
        Ok(())
    } else {
        Err(read_error(resp).await)
    }
}

/// `POST path` with a text body (a dataset upload) → JSON.
pub async fn post_text<T: DeserializeOwned>(path: &str, text: String) -> Result<T, ApiErr> {
    let req = authorized(Request::post(path)).header("Content-Type", "text/plain").body(text).map_err(|e| ApiErr::new(e.to_string()))?;
    read(req.send().await.map_err(network)?).await
}

/// Runs `fut` in the background and puts its result in `into`.
pub fn load<T, F>(into: RwSignal<Loaded<T>>, fut: F)
where
    T: Send + Sync + 'static,
    F: Future<Output = Result<T, ApiErr>> + 'static,
{
    leptos::task::spawn_local(async move { into.set(Some(fut.await)) });
}

/// The connection of an [`EventStream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    Open,
    /// Dropped; the browser retries by itself.
    Reconnecting,
    /// Refused or ended for good (the page falls back to polling).
    Closed,
}

/// An open `GET /api/runs/{id}/events` stream; dropping it closes it.
pub struct EventStream {
    source: web_sys::EventSource,
    _listeners: Vec<Closure<dyn FnMut(web_sys::Event)>>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.source.close();
    }
}

impl EventStream {
    /// Opens the stream of run `id`: `on_event` gets each decoded event,
    /// `on_state` each change of the connection.
    pub fn open(id: &str, on_event: impl Fn(RunEvent) + 'static, on_state: impl Fn(StreamState) + 'static) -> Result<Self, ApiErr> {
        // EventSource cannot send headers; the server takes `?token=` on GETs.
        let url = match token() {
            Some(t) => format!("{}?token={}", run_path(id, "/events"), encode(&t)),
            None => run_path(id, "/events"),
        };
        let source = web_sys::EventSource::new(&url)
            .map_err(|e| ApiErr::new(format!("Cannot open the event stream: {e:?}")))?;
        let on_event = std::rc::Rc::new(on_event);
        let on_state = std::rc::Rc::new(on_state);
        let mut listeners = Vec::new();
        for name in ["status", "metrics", "samples", "progress", "eval", "message"] {
            let f = on_event.clone();
            let l = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                let Some(data) = e.dyn_ref::<web_sys::MessageEvent>().and_then(|m| m.data().as_string()) else { return };
                match serde_json::from_str::<RunEvent>(&data) {
                    Ok(ev) => f(ev),
                    Err(err) => leptos::logging::warn!("run event not understood ({err}): {data}"),
                }
            });
            let _ = source.add_event_listener_with_callback(name, l.as_ref().unchecked_ref());
            listeners.push(l);
        }
        for name in ["open", "error"] {
            let f = on_state.clone();
            let src = source.clone();
            let l = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                f(match (name, src.ready_state()) {
                    ("open", _) => StreamState::Open,
                    (_, web_sys::EventSource::CLOSED) => StreamState::Closed,
                    _ => StreamState::Reconnecting,
                })
            });
            let _ = source.add_event_listener_with_callback(name, l.as_ref().unchecked_ref());
            listeners.push(l);
        }
        Ok(EventStream { source, _listeners: listeners })
    }
}
