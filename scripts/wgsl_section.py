"""The generated part of a shader: the text between its BEGIN and END lines, rewritten by the
scripts/gen_*.py that own it."""
import pathlib


def write_between(shader, begin, end, text):
    path = pathlib.Path(__file__).resolve().parent.parent / "shaders" / shader
    old = path.read_text()
    start = old.index(begin)
    stop = old.index(end)
    path.write_text(old[: start + len(begin)] + "\n" + text + "\n" + old[stop:])
