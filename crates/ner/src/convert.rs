//! From the shipped ONNX file to plain f32 tensors under Hugging Face's `BertForTokenClassification`
//! names, which candle's BERT loads (the layout is in `docs/ner-model.md`):
//!
//! - each `com.microsoft.MatMulNBits` node (4-bit blocks, no zero points) becomes its Linear weight,
//!   `[out, in]`, named after the node: `/bert/encoder/layer.0/attention/self/query/MatMul_Q4` is
//!   `bert.encoder.layer.0.attention.self.query.weight`;
//! - each 8-bit table `X_quantized` with its scalar `X_scale` and `X_zero_point` becomes `X`;
//! - every other f32 initializer (biases, LayerNorm) is kept as it is.
//!
//! The conversion is exact: it does in f32 what onnxruntime does. Anything it does not know (another
//! width, zero points, external data, quantised data no operator here reads) is an error, never a guess.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;

use crate::onnx::{FLOAT, ModelProto, NodeProto, TensorProto, UINT8};

/// One converted tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Why a file could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model has no graph")]
    NoGraph,
    #[error("initializer {name}: {why}")]
    Initializer { name: String, why: String },
    #[error("node {node}: {why}")]
    Node { node: String, why: String },
    #[error("writing safetensors: {0}")]
    Write(String),
}

fn bad_init(t: &TensorProto, why: impl Into<String>) -> ConvertError {
    ConvertError::Initializer {
        name: t.name.clone(),
        why: why.into(),
    }
}

fn bad_node(n: &NodeProto, why: impl Into<String>) -> ConvertError {
    ConvertError::Node {
        node: n.name.clone(),
        why: why.into(),
    }
}

fn shape(t: &TensorProto) -> Result<Vec<usize>, ConvertError> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad_init(t, format!("dimension {d}"))))
        .collect()
}

fn count(t: &TensorProto) -> Result<usize, ConvertError> {
    shape(t)?
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad_init(t, "too many elements"))
}

/// The values of a FLOAT tensor, from `raw_data` or `float_data`.
fn floats(t: &TensorProto) -> Result<Vec<f32>, ConvertError> {
    if t.data_type != FLOAT {
        return Err(bad_init(
            t,
            format!("data type {} where FLOAT was expected", t.data_type),
        ));
    }
    let n = count(t)?;
    let values: Vec<f32> = if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    if values.len() != n || (!t.raw_data.is_empty() && t.raw_data.len() != 4 * n) {
        return Err(bad_init(t, format!("{} values for {n} elements", values.len())));
    }
    Ok(values)
}

/// The values of a UINT8 tensor, from `raw_data` or `int32_data`.
fn bytes(t: &TensorProto) -> Result<Vec<u8>, ConvertError> {
    if t.data_type != UINT8 {
        return Err(bad_init(
            t,
            format!("data type {} where UINT8 was expected", t.data_type),
        ));
    }
    let n = count(t)?;
    let values: Vec<u8> = if t.raw_data.is_empty() {
        t.int32_data
            .iter()
            .map(|&v| u8::try_from(v).map_err(|_| bad_init(t, format!("{v} is not a byte"))))
            .collect::<Result<_, _>>()?
    } else {
        t.raw_data.clone()
    };
    if values.len() != n {
        return Err(bad_init(t, format!("{} values for {n} elements", values.len())));
    }
    Ok(values)
}

fn attribute(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// `/bert/encoder/layer.0/attention/self/query/MatMul_Q4` -> `bert.encoder.layer.0.attention.self.query.weight`.
fn weight_name(node: &NodeProto) -> Result<String, ConvertError> {
    let path = node.name.trim_start_matches('/');
    match path.rsplit_once('/') {
        Some((module, _)) if !module.is_empty() => Ok(format!("{}.weight", module.replace('/', "."))),
        _ => Err(bad_node(node, "its name does not say which weight it computes")),
    }
}

/// One `MatMulNBits` node's weight, dequantised: `W[n][k] = (nibble - 8) * scale[n][k / block]`, element
/// `2j` of a block in the low nibble of its byte `j` and `2j + 1` in the high one.
fn matmul_nbits(
    node: &NodeProto,
    init: &HashMap<&str, &TensorProto>,
) -> Result<(Tensor, [String; 2]), ConvertError> {
    let attr =
        |name: &str| attribute(node, name).ok_or_else(|| bad_node(node, format!("no attribute {name}")));
    let (k, n, bits, block) = (attr("K")?, attr("N")?, attr("bits")?, attr("block_size")?);
    if bits != 4 {
        return Err(bad_node(
            node,
            format!("{bits}-bit weights (only 4-bit are known)"),
        ));
    }
    let dims = |v: i64| usize::try_from(v).ok().filter(|v| *v > 0);
    let (Some(k), Some(n), Some(block)) = (dims(k), dims(n), dims(block)) else {
        return Err(bad_node(node, "K, N and block_size must be above 0"));
    };
    if block % 2 != 0 || k % block != 0 {
        return Err(bad_node(
            node,
            format!("K {k} is not made of whole blocks of {block}"),
        ));
    }
    if node.input.iter().skip(3).any(|i| !i.is_empty()) {
        return Err(bad_node(
            node,
            "zero points, group indices or a bias input (not known)",
        ));
    }
    let input = |i: usize| {
        let name = node.input.get(i).map(String::as_str).unwrap_or_default();
        init.get(name)
            .copied()
            .ok_or_else(|| bad_node(node, format!("input {i} ({name:?}) is not an initializer")))
    };
    let (packed, scales) = (bytes(input(1)?)?, floats(input(2)?)?);
    let blocks = k / block;
    if packed.len() != n * blocks * block / 2 || scales.len() != n * blocks {
        return Err(bad_node(
            node,
            format!(
                "{} packed bytes and {} scales for N {n}, K {k}",
                packed.len(),
                scales.len()
            ),
        ));
    }
    let mut data = Vec::with_capacity(n * k);
    for (row, scales) in packed.chunks_exact(k / 2).zip(scales.chunks_exact(blocks)) {
        for (b, &byte) in row.iter().enumerate() {
            let scale = scales[2 * b / block];
            data.push((f32::from(byte & 0x0f) - 8.0) * scale);
            data.push((f32::from(byte >> 4) - 8.0) * scale);
        }
    }
    let used = [node.input[1].clone(), node.input[2].clone()];
    Ok((
        Tensor {
            name: weight_name(node)?,
            shape: vec![n, k],
            data,
        },
        used,
    ))
}

/// Converts an ONNX file's bytes into f32 tensors, sorted by name.
pub fn convert(onnx: &[u8]) -> Result<Vec<Tensor>, ConvertError> {
    let model = ModelProto::decode(onnx)?;
    let graph = model.graph.ok_or(ConvertError::NoGraph)?;
    let mut init: HashMap<&str, &TensorProto> = HashMap::new();
    for t in &graph.initializer {
        if t.data_location != 0 {
            return Err(bad_init(t, "its data is in another file"));
        }
        init.insert(t.name.as_str(), t);
    }
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut used: HashSet<String> = HashSet::new();
    let add = |t: Tensor, out: &mut BTreeMap<String, Tensor>| match out.insert(t.name.clone(), t) {
        Some(twice) => Err(ConvertError::Initializer {
            name: twice.name,
            why: "two tensors would have this name".into(),
        }),
        None => Ok(()),
    };
    for node in graph.node.iter().filter(|n| n.op_type == "MatMulNBits") {
        let (tensor, inputs) = matmul_nbits(node, &init)?;
        used.extend(inputs);
        add(tensor, &mut out)?;
    }
    for t in &graph.initializer {
        let Some(base) = t.name.strip_suffix("_quantized") else {
            continue;
        };
        let scalar = |suffix: &str| {
            init.get(format!("{base}{suffix}").as_str())
                .copied()
                .ok_or_else(|| bad_init(t, format!("no {base}{suffix} beside it")))
        };
        let (scale, zero) = (floats(scalar("_scale")?)?, bytes(scalar("_zero_point")?)?);
        let ([scale], [zero]) = (scale.as_slice(), zero.as_slice()) else {
            return Err(bad_init(
                t,
                "its scale and zero point must be one value each (per tensor)",
            ));
        };
        let data = bytes(t)?
            .into_iter()
            .map(|q| (f32::from(q) - f32::from(*zero)) * scale)
            .collect();
        used.extend([
            t.name.clone(),
            format!("{base}_scale"),
            format!("{base}_zero_point"),
        ]);
        add(
            Tensor {
                name: base.to_owned(),
                shape: shape(t)?,
                data,
            },
            &mut out,
        )?;
    }
    for t in graph.initializer.iter().filter(|t| !used.contains(&t.name)) {
        // What is left must be a named f32 parameter (bias, LayerNorm); anything else is data this
        // converter would silently drop.
        if t.data_type != FLOAT || t.name.contains("::") {
            return Err(bad_init(t, "no operator the converter knows reads it"));
        }
        add(
            Tensor {
                name: t.name.clone(),
                shape: shape(t)?,
                data: floats(t)?,
            },
            &mut out,
        )?;
    }
    Ok(out.into_values().collect())
}

/// The tensors as a safetensors file (f32, little-endian), with `metadata` in its header.
pub fn to_safetensors(
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, ConvertError> {
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&buffers)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| ConvertError::Write(format!("{}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| ConvertError::Write(e.to_string()))
}

#[cfg(test)]
mod tests;
