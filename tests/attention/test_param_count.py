"""The parameter-count table against closed-form counts for T5-base shapes."""
import pytest

from synth_jax.attention import param_count

E, H, D, L = 768, 12, 64, 512
VALUE_OUT = 2 * E * H * D  # every variant keeps G (value) and the output projection
EXPECTED = {
    'vanilla': (VALUE_OUT + 2 * E * H * D, 0),
    'dense': (VALUE_OUT + E * H * D + H * D * L, 0),
    'factorized_dense': (VALUE_OUT + E * H * (16 + 32), 0),
    'random': (VALUE_OUT + H * L * L, 0),
    'fixed_random': (VALUE_OUT, H * L * L),
    'factorized_random': (VALUE_OUT + 2 * H * L * 8, 0),
    'orthogonal': (VALUE_OUT, 2 * E * H * D),
    'random+vanilla': (VALUE_OUT + H * L * L + 2 * E * H * D + 2, 0),
    'dense+vanilla': (VALUE_OUT + E * H * D + H * D * L + 2 * E * H * D + 2, 0),
    'random+dense': (VALUE_OUT + H * L * L + E * H * D + H * D * L + 2, 0),
}


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_counts_match_closed_form_for_t5_base(name):
  trainable, frozen = EXPECTED[name]
  assert param_count.count_parameters(name) == {'trainable': trainable, 'frozen': frozen}


def test_random_adds_heads_times_512_squared_per_layer():
  extra = (param_count.count_parameters('random')['trainable']
           - param_count.count_parameters('vanilla')['trainable'])
  assert extra == H * L * L - 2 * E * H * D


def test_table_prints_one_row_per_type(capsys):
  param_count.main(['vanilla', 'fixed_random'])
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith('Parameters per attention layer (embed 768, 12 heads x 64')
  assert out[2].split() == ['vanilla', f'{4 * E * H * D:,}', '0']
  assert out[3].split() == ['fixed_random', f'{VALUE_OUT:,}', f'{H * L * L:,}']
