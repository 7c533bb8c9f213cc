"""docs/deployment.md's NumPy-deployment example runs as written."""

import pathlib
import re

DOC = (pathlib.Path(__file__).resolve().parent.parent / 'docs'
       / 'deployment.md')
NOT_EXECUTED = '# not executed'


def _python_blocks(text):
  return re.findall(r'```python\n(.*?)```', text, flags=re.DOTALL)


def test_doc_has_one_runnable_and_one_pytorch_block():
  blocks = _python_blocks(DOC.read_text())
  assert len(blocks) == 2
  assert [b.startswith(NOT_EXECUTED) for b in blocks] == [False, True]


def test_doc_example_runs(capsys):
  for block in _python_blocks(DOC.read_text()):
    if block.startswith(NOT_EXECUTED):
      continue
    namespace = {'__name__': '__deployment_doc__'}
    exec(compile(block, str(DOC), 'exec'), namespace)  # pylint: disable=exec-used
    out = capsys.readouterr().out
    assert 'file bytes on disk' in out
    assert namespace['logits'].shape == (8, 10)
