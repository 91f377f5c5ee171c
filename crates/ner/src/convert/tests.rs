#![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

use prost::Message as _;

use super::*;
use crate::onnx::{AttributeProto, GraphProto};

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: 2,
        ..Default::default()
    }
}

fn raw(name: &str, data_type: i32, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type,
        dims: dims.to_vec(),
        raw_data,
        ..Default::default()
    }
}

fn f32s(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    raw(
        name,
        FLOAT,
        dims,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn matmul(name: &str, k: i64, n: i64, inputs: &[&str]) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: "MatMulNBits".into(),
        domain: "com.microsoft".into(),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![format!("{name}_output_0")],
        attribute: vec![int("K", k), int("N", n), int("bits", 4), int("block_size", 32)],
    }
}

/// A model of one 4-bit matrix (N 2, K 64: two blocks a row), one 8-bit table whose scale and zero
/// point sit in `float_data` and `int32_data`, and a bias.
fn model() -> ModelProto {
    // Row 0: byte j of block 0 holds nibbles (j, 15 - j); block 1 all 0x88 (zero). Row 1: all 0x9f.
    let mut packed = Vec::new();
    packed.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    packed.extend([0x88u8; 16]);
    packed.extend([0x9fu8; 32]);
    let table_scale = TensorProto {
        name: "emb.weight_scale".into(),
        data_type: FLOAT,
        float_data: vec![0.5],
        ..Default::default()
    };
    let table_zero = TensorProto {
        name: "emb.weight_zero_point".into(),
        data_type: UINT8,
        int32_data: vec![10],
        ..Default::default()
    };
    ModelProto {
        graph: Some(GraphProto {
            node: vec![matmul(
                "/bert/encoder/layer.0/attention/self/query/MatMul_Q4",
                64,
                2,
                &["x", "onnx::MatMul_1_Q4", "onnx::MatMul_1_scales"],
            )],
            initializer: vec![
                raw("onnx::MatMul_1_Q4", UINT8, &[2, 2, 16], packed),
                f32s("onnx::MatMul_1_scales", &[2, 2], &[0.25, -1.0, -0.5, 2.0]),
                raw("emb.weight_quantized", UINT8, &[2, 2], vec![10, 12, 0, 255]),
                table_scale,
                table_zero,
                f32s(
                    "bert.encoder.layer.0.attention.self.query.bias",
                    &[2],
                    &[1.5, -2.5],
                ),
            ],
        }),
        opset_import: Vec::new(),
    }
}

fn named<'a>(tensors: &'a [Tensor], name: &str) -> &'a Tensor {
    tensors.iter().find(|t| t.name == name).unwrap_or_else(|| {
        panic!(
            "no {name} in {:?}",
            tensors.iter().map(|t| &t.name).collect::<Vec<_>>()
        )
    })
}

#[test]
fn four_bit_blocks_unpack_low_nibble_first_around_eight_with_their_blocks_scale() {
    let tensors = convert(&model().encode_to_vec()).unwrap();
    assert_eq!(tensors.len(), 3);
    let w = named(&tensors, "bert.encoder.layer.0.attention.self.query.weight");
    assert_eq!(w.shape, [2, 64]);
    // Row 0, block 0 (scale 0.25): element 2j is nibble j, element 2j + 1 is nibble 15 - j.
    for j in 0..16 {
        assert_eq!(w.data[2 * j], (j as f32 - 8.0) * 0.25, "element {}", 2 * j);
        assert_eq!(
            w.data[2 * j + 1],
            (7.0 - j as f32) * 0.25,
            "element {}",
            2 * j + 1
        );
    }
    // Row 0, block 1: nibble 8 is zero whatever the (negative) scale.
    assert!(w.data[32..64].iter().all(|v| *v == 0.0));
    // Row 1: 0x9f is low 15 (7 * scale) then high 9 (1 * scale); block 0 scale -0.5, block 1 scale 2.
    assert_eq!(&w.data[64..68], &[-3.5, -0.5, -3.5, -0.5]);
    assert_eq!(&w.data[96..100], &[14.0, 2.0, 14.0, 2.0]);
}

#[test]
fn eight_bit_tables_subtract_their_zero_point_and_other_floats_stay() {
    let tensors = convert(&model().encode_to_vec()).unwrap();
    let e = named(&tensors, "emb.weight");
    assert_eq!(
        (e.shape.as_slice(), e.data.as_slice()),
        (&[2, 2][..], &[0.0, 1.0, -5.0, 122.5][..])
    );
    let b = named(&tensors, "bert.encoder.layer.0.attention.self.query.bias");
    assert_eq!(b.data, [1.5, -2.5]);
}

#[test]
fn what_the_converter_does_not_know_is_an_error_naming_it() {
    let mut m = model();
    let graph = m.graph.as_mut().unwrap();
    graph.node[0].attribute[2] = int("bits", 8);
    let e = convert(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("query/MatMul_Q4") && e.contains("8-bit"), "{e}");

    let mut m = model();
    m.graph.as_mut().unwrap().node[0]
        .input
        .push("onnx::MatMul_1_zero_points".into());
    let e = convert(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("zero points"), "{e}");

    // Quantised data no operator reads is never dropped silently.
    let mut m = model();
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(raw("onnx::Stray_Q4", UINT8, &[1], vec![1]));
    let e = convert(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("onnx::Stray_Q4"), "{e}");

    let mut m = model();
    m.graph.as_mut().unwrap().initializer[1] = f32s("onnx::MatMul_1_scales", &[2, 1], &[1.0, 1.0]);
    let e = convert(&m.encode_to_vec()).unwrap_err().to_string();
    assert!(e.contains("scales"), "{e}");

    assert!(matches!(convert(b"\xff\xff\xff"), Err(ConvertError::Decode(_))));
}

#[test]
fn safetensors_hold_the_values_and_the_metadata() {
    let tensors = convert(&model().encode_to_vec()).unwrap();
    let meta = HashMap::from([("source".to_owned(), "test".to_owned())]);
    let bytes = to_safetensors(&tensors, meta).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["source"], "test");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let e = file.tensor("emb.weight").unwrap();
    assert_eq!(e.shape(), [2, 2]);
    let values: Vec<f32> = e
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(values, [0.0, 1.0, -5.0, 122.5]);
}
