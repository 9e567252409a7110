import json

import h5py
import numpy as np

from kerasfold.readers import read_model


def test_three_flavours_read_into_one_graph(tiny_yolo):
    graphs = {f: read_model(p) for f, p in tiny_yolo.items()}
    ref = graphs["keras2-h5"]
    assert len(ref.nodes) == 1 + 9 + 8 + 8 + 6
    for flavour, g in graphs.items():
        assert g.source.flavour == flavour
        assert list(g.nodes) == list(ref.nodes)
        assert [n.kind for n in g] == [n.kind for n in ref]
        assert [n.inputs for n in g] == [n.inputs for n in ref]
        assert g.inputs == ["input_1"] and g.outputs == ["conv2d_9"]
        for n in g:
            assert sorted(n.weights) == sorted(ref[n.name].weights)
            for k, w in n.weights.items():
                np.testing.assert_array_equal(w, ref[n.name].weights[k])
    assert graphs["keras2-h5"].source.keras_version.startswith("2.")
    assert graphs["keras"].source.keras_version.startswith("3.")
    assert sorted(ref["batch_normalization_1"].weights) == ["beta", "gamma", "moving_mean", "moving_variance"]


def test_keras2_specifics(tiny_yolo):
    with h5py.File(tiny_yolo["keras2-h5"]) as f:
        config = json.loads(f.attrs["model_config"])
        name = f["model_weights/conv2d_1"].attrs["weight_names"][0]
        assert "conv2d_1/kernel:0" == (name.decode() if isinstance(name, bytes) else name)
    layers = {l["name"]: l for l in config["config"]["layers"]}
    assert "alpha" in layers["leaky_re_lu_1"]["config"]
    assert isinstance(layers["conv2d_1"]["inbound_nodes"][0], list)
    g = read_model(tiny_yolo["keras2-h5"])
    assert g["input_1"].output_shape == (416, 416, 3)          # from batch_input_shape
    assert g["leaky_re_lu_1"].config["alpha"] == np.float32(0.1)


def test_keras_zip_maps_groups_by_layer_name(tiny_yolo):
    """In .keras, group 'conv2d' holds layer 'conv2d_1': weights must follow the layer name."""
    g = read_model(tiny_yolo["keras"])
    assert g["conv2d_1"].weights["kernel"].shape == (3, 3, 3, 16)
    assert g["conv2d_9"].weights["bias"].shape == (125,)


def test_sequential(tmp_path):
    from models.small import sequential
    model = sequential()
    for name in ("s.keras", "s.h5"):
        model.save(tmp_path / name)
        g = read_model(tmp_path / name)
        kinds = [n.kind for n in g]
        assert kinds == ["InputLayer", "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Conv2D"]
        np.testing.assert_array_equal(g["c1"].weights["kernel"], model.get_layer("c1").get_weights()[0])
