//! Amortize web UI. Client-side rendered with Leptos and built by Trunk:
//! run `scripts/build-frontend.sh` from the workspace root.
//!
//! - [`api`]: the fetch client of the server's `/api`, and run event streams.
//! - [`charts`]: SVG charts (metric lines, log-scale distribution, scatter).
//! - [`components`]: loading/error states, status badges, the source picker.
//! - [`pages`]: one module per page; [`app`] routes between them.

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod charts;
#[cfg(target_arch = "wasm32")]
mod components;
#[cfg(target_arch = "wasm32")]
mod pages;

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("amortize-frontend runs in the browser: build it with scripts/build-frontend.sh");
    std::process::exit(2);
}
