use clap::Parser;

fn main() {
    let cli = vit_wgpu::cli::Cli::parse();
    if let Err(e) = vit_wgpu::cli::commands::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
