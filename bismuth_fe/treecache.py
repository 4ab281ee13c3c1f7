"""kazoo's TreeCache, answering a changed children list by its new names only.

When a znode's children change, kazoo's ``TreeNode`` walks every child (sorting them all
and joining each one's path) to find the new ones. A frontend's cache gets that for
``/function`` and for ``/route`` on every new function: 10,000 names each with 10,000
functions, on the one thread all of a cache's results go through, for every create. A
:class:`ListingTreeNode` takes the set difference first and looks only at the names that
are new; everything else (data, deletions, watches, reconnects, the ``INITIALIZED`` event)
is kazoo's own.
"""

from __future__ import annotations

from typing import Any

from kazoo.protocol.paths import join
from kazoo.recipe.cache import TreeCache, TreeEvent, TreeNode


class ListingTreeNode(TreeNode):  # type: ignore[misc]
    __slots__ = ()

    def _process_result(self, method_name: str, path: str, result: Any) -> None:
        if method_name != "get_children" or not result.successful():
            super()._process_result(method_name, path, result)
            return
        for child in sorted(set(result.get()).difference(self._children)):
            node = ListingTreeNode(self._tree, join(path, child), self)
            self._children[child] = node
            node.on_created()
        tree = self._tree
        tree._outstanding_ops -= 1
        if tree._outstanding_ops == 0 and not tree._is_initialized:
            tree._is_initialized = True
            self._publish_event(TreeEvent.INITIALIZED)


class ListingTreeCache(TreeCache):  # type: ignore[misc]
    """A TreeCache of :class:`ListingTreeNode` s."""

    def __init__(self, client: Any, path: str) -> None:
        super().__init__(client, path)
        self._root = ListingTreeNode.make_root(self, path)
