//! Amortize web UI. Client-side rendered with Leptos and built by Trunk:
//! run `scripts/build-frontend.sh` from the workspace root.

#[cfg(target_arch = "wasm32")]
mod app;

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
