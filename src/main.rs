use clap::Parser;

fn main() {
    // On headless Linux, Vulkan's window-system probing prints "XDG_RUNTIME_DIR is invalid"
    // errors that have nothing to do with compute; give it a directory so it stays quiet.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = vit_wgpu::cli::Cli::parse();
    if let Err(e) = vit_wgpu::cli::commands::run(cli) {
        eprintln!("error: {e}");
        // A bad flag exits with 2, as clap's own usage errors do.
        let usage = e.is::<vit_wgpu::cli::resolve::UsageError>();
        std::process::exit(if usage { 2 } else { 1 });
    }
}
