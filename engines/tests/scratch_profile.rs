use candle_core::{Device, Tensor, DType};
use std::time::Instant;

fn t(name: &str, n: usize, mut f: impl FnMut()) {
    let mut v = Vec::new();
    for _ in 0..n { let s = Instant::now(); f(); v.push(s.elapsed().as_secs_f64()*1e3); }
    v.sort_by(|a,b| a.total_cmp(b));
    println!("{name:<50} min {:8.3} med {:8.3} ms", v[0], v[v.len()/2]);
}

#[test]
#[ignore]
fn profile() {
    let d = Device::Cpu;
    let r = |dims: &[usize]| Tensor::rand(-1f32, 1f32, dims, &d).unwrap();
    // decode: q [4, 8, 80], lat [4, 8192, 80]
    let q = r(&[4, 8, 80]); let lat = r(&[4, 8192, 80]);
    t("decode q·latᵀ", 20, || { q.matmul(&lat.t().unwrap()).unwrap(); });
    let latt = lat.t().unwrap().contiguous().unwrap();
    t("decode q·latT(contig)", 20, || { q.matmul(&latt).unwrap(); });
    let p = r(&[4, 8, 8192]);
    let v = lat.narrow(2, 0, 64).unwrap();
    t("decode p·v (strided)", 20, || { p.matmul(&v).unwrap(); });
    let vc = v.contiguous().unwrap();
    t("decode p·v (contig)", 20, || { p.matmul(&vc).unwrap(); });
    // prefill MHA: q [8,128,24], k [8, 8192, 24]
    let q = r(&[8, 128, 24]); let k = r(&[8, 8192, 24]); let vv = r(&[8, 8192, 16]);
    t("prefill q·kᵀ", 10, || { q.matmul(&k.t().unwrap()).unwrap(); });
    let kt = k.t().unwrap().contiguous().unwrap();
    t("prefill q·kT(contig)", 10, || { q.matmul(&kt).unwrap(); });
    let p = r(&[8, 128, 8192]);
    t("prefill p·v", 10, || { p.matmul(&vv).unwrap(); });
    let q32 = r(&[8, 32, 24]);
    t("prefill q32·kᵀ x4", 10, || { for _ in 0..4 { q32.matmul(&k.t().unwrap()).unwrap(); } });
    // indexer: [1, 512, 32] x [1, 32, 8192]
    let iq = r(&[1, 512, 32]); let ik = r(&[1, 8192, 32]);
    t("indexer iq·ikᵀ", 10, || { iq.matmul(&ik.t().unwrap()).unwrap(); });
    let kb = k.to_dtype(DType::BF16).unwrap();
    t("widen k bf16", 10, || { kb.to_dtype(DType::F32).unwrap(); });
    let big = vec![0.5f32; 8*128*8192];
    t("alloc+fill 32MB", 10, || { let v = vec![0f32; 8*128*8192]; std::hint::black_box(v); });
    t("copy 32MB", 10, || { let v = big.clone(); std::hint::black_box(v); });
}

#[test]
#[ignore]
fn chunks() {
    use ctxcost_core::{Case, Inputs, ModelShape, Phase, Precision};
    use ctxcost_engines::Engine;
    use ctxcost_engines::cpu::{DenseCpu, DsaCpu};
    for (id, phase, b, q) in [("dense-cpu", Phase::Prefill, 1, 128), ("dsa-cpu", Phase::Prefill, 1, 128), ("dense-cpu", Phase::Decode, 4, 1), ("dsa-cpu", Phase::Decode, 4, 1)] {
        for chunk in [1usize, 2, 4, 8, 16, 32, 128] {
            if q == 1 && chunk > 1 { continue; }
            let c = Case { engine: id.into(), shape: ModelShape::tiny(), phase, context: 8192, batch: b, query_len: q, precision: Precision::F32, seed: 5 };
            let mut e: Box<dyn Engine> = if id == "dense-cpu" { Box::new(DenseCpu::new().with_max_chunk(chunk)) } else { Box::new(DsaCpu::new().with_max_chunk(chunk)) };
            e.prepare(&c, &Inputs::seeded(5)).unwrap();
            let mut v: Vec<_> = (0..15).map(|_| e.run().unwrap()).collect();
            v.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
            println!("{id} {phase} chunk {chunk:4}: min {:8.2} med {:8.2}  {:?}", v[0].total_ms, v[7].total_ms, v[0].components);
        }
    }
}

#[test]
#[ignore]
fn loop_dense_prefill() {
    use ctxcost_core::{Case, Inputs, ModelShape, Phase, Precision};
    use ctxcost_engines::Engine;
    let id = std::env::var("ENG").unwrap_or("dense-cpu".into());
    let prec = if std::env::var("PREC").as_deref() == Ok("bf16") { Precision::Bf16 } else { Precision::F32 };
    let decode = std::env::var("PHASE").as_deref() == Ok("decode");
    let (phase, batch, query_len) = if decode { (Phase::Decode, 4, 1) } else { (Phase::Prefill, 1, 128) };
    let c = Case { engine: id.clone(), shape: ModelShape::tiny(), phase, context: 8192, batch, query_len, precision: prec, seed: 5 };
    let mut e = ctxcost_engines::make_engine(&id).unwrap();
    e.prepare(&c, &Inputs::seeded(5)).unwrap();
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut v: Vec<_> = (0..n).map(|_| e.run().unwrap()).collect();
    v.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
    println!("{id} min {:.2} med {:.2} {:?}", v[0].total_ms, v[n / 2].total_ms, v[n / 2].components);
}
