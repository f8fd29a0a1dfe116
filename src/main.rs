fn main() {
    match vit_wgpu::gpu::Gpu::new(&Default::default()) {
        Ok(g) => print!("{}", g.describe()),
        Err(e) => eprintln!("{e}"),
    }
}
