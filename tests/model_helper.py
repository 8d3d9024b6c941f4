"""Shared checks for Keras models and custom layers (in the style of keras-hub's TestCase)."""

import numpy as np
import keras
import tensorflow as tf


def check_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert clone.get_config() == config
    return clone


def check_model(model, inputs, loss_fn, tmp_path, expected_shapes):
    """Symbolic and eager shapes, config round trip, save/reload, one optimisation step.

    Args:
      model: a functional Keras model with dict outputs.
      inputs: a fixed input batch.
      loss_fn: ``outputs dict -> scalar loss``.
      tmp_path: a directory for the saved model.
      expected_shapes: output name -> full shape for ``inputs``.
    """
    # symbolic shapes: batch dimension unknown, the rest fixed
    for name, shape in expected_shapes.items():
        assert tuple(model.output[name].shape) == (None,) + tuple(shape[1:]), name
    eager = model(inputs, training=False)
    for name, shape in expected_shapes.items():
        assert tuple(eager[name].shape) == tuple(shape), name
        assert eager[name].dtype == tf.float32, name

    # config round trip rebuilds the same architecture
    clone = keras.Model.from_config(model.get_config())
    assert clone.count_params() == model.count_params()

    # save / reload gives the same outputs
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    again = reloaded(inputs, training=False)
    for name in expected_shapes:
        np.testing.assert_allclose(again[name].numpy(), eager[name].numpy(), rtol=1e-5, atol=1e-5)

    # a few optimisation steps on a fixed batch lower the loss
    optimizer = keras.optimizers.RMSprop(1e-3)
    before = float(loss_fn(model(inputs, training=True)))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = loss_fn(model(inputs, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in grads)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    after = float(loss_fn(model(inputs, training=True)))
    assert after < before, (before, after)
