//! Loading captured activations from a safetensors file (`--tensors FILE`).
//!
//! The file holds 2-D tensors named as `ctxcost_core::InputTensor::name` (`mha_q`, `mha_k`,
//! `mha_v`, `mqa_q`, `latent`, `index_q`, `index_k`, `index_w`), each `[positions, cols]`
//! in f32, bf16 or f16 — one row per token position of a captured prompt. Query tensors are
//! indexed by the query's position, so a case at context L reads rows L-q..L of the query
//! tensors and rows 0..L of the key tensors. Missing tensors are an error only for cases
//! that need them.

use std::collections::HashMap;

use ctxcost_core::inputs::LoadedTensors;
use ctxcost_core::InputTensor;
use safetensors::{Dtype, SafeTensors};

use crate::WorkloadError;

/// Load every known tensor present in `path`.
pub fn load(path: &str) -> Result<LoadedTensors, WorkloadError> {
    let err = |message: String| WorkloadError::Tensors { path: path.into(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for t in InputTensor::ALL {
        let Ok(view) = st.tensor(t.name()) else { continue };
        let shape = view.shape();
        if shape.len() != 2 {
            return Err(err(format!("tensor `{}` has shape {:?}; expected [positions, cols]", t.name(), shape)));
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(err(format!("tensor `{}` has dtype {other:?}; use f32, bf16 or f16", t.name()))),
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(err(format!("tensor `{}` holds NaN or infinite values", t.name())));
        }
        tensors.insert(t, (shape[0], shape[1], values));
    }
    if tensors.is_empty() {
        let names: Vec<&str> = InputTensor::ALL.iter().map(|t| t.name()).collect();
        return Err(err(format!("no tensor with a known name; expected some of: {}", names.join(", "))));
    }
    Ok(LoadedTensors { tensors, source: path.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{Case, Inputs, ModelShape, Phase, Precision};
    use safetensors::tensor::TensorView;
    use std::sync::Arc;

    #[test]
    fn round_trip_and_errors() {
        let case = Case { engine: "dense-cpu".into(), method: ctxcost_core::Method::Dense, shape: ModelShape::tiny(), phase: Phase::Decode, context: 10, batch: 2, query_len: 1, precision: Precision::F32, seed: 0, kernel: Default::default() };
        let cols = InputTensor::Latent.cols(&case);
        let lat: Vec<f32> = (0..12 * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let qcols = InputTensor::MqaQ.cols(&case);
        let q: Vec<f32> = (0..12 * qcols).map(|i| (i as f32 * 0.11).cos()).collect();
        let lb: Vec<u8> = lat.iter().flat_map(|x| x.to_le_bytes()).collect();
        let qb: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = vec![
            ("latent", TensorView::new(Dtype::F32, vec![12, cols], &lb).unwrap()),
            ("mqa_q", TensorView::new(Dtype::F32, vec![12, qcols], &qb).unwrap()),
        ];
        let dir = std::env::temp_dir().join(format!("ctxcost-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acts.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let lt = load(path.to_str().unwrap()).unwrap();
        let inputs = Inputs { seed: 0, loaded: Some(Arc::new(lt)) };
        inputs.check(&case, &[InputTensor::Latent, InputTensor::MqaQ]).unwrap();
        // Query row 0 at context 10 is position 9; key row 3 is position 3.
        assert_eq!(inputs.value(&case, InputTensor::MqaQ, 1, 0, 2), q[9 * qcols + 2]);
        assert_eq!(inputs.value(&case, InputTensor::Latent, 0, 3, 5), lat[3 * cols + 5]);
        assert!(inputs.check(&case, &[InputTensor::IndexK]).is_err());
        let long = Case { context: 20, ..case };
        assert!(inputs.check(&long, &[InputTensor::Latent]).unwrap_err().to_string().contains("positions"));
        std::fs::write(dir.join("bad"), b"nope").unwrap();
        assert!(load(dir.join("bad").to_str().unwrap()).is_err());
    }
}
