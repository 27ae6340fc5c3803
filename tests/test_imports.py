"""The house has floors: no module imports (at the top or inside a function) anything that
imports it back. Reads the import statements of every module under jaxbig/ with `ast`
(function-level imports count: a lazy import is still an arrow) and fails on a cycle."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'jaxbig')


def _modules() -> dict[str, str]:
    """{dotted module name: path} of every .py file under jaxbig/."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                if rel[-1] == '__init__':
                    rel = rel[:-1]
                out['.'.join(rel)] = os.path.join(root, f)
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the jaxbig modules it imports}. `from jaxbig.x import y` names module
    jaxbig.x.y when that is a module, else jaxbig.x."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')[: len(package.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([base] if base else []))
                targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import jaxbig.a.b.c` of an attribute
                    t = t.rpartition('.')[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, 'import cycles (a module imports, maybe lazily, what imports it):\n' + (
        '\n'.join(' <-> '.join(c) for c in found))
