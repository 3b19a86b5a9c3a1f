"""``size_batches``: the one batching loop of the engine and the mirror."""

from tunescope.batches import size_batches


def test_batches_keep_order_and_stay_under_the_limit():
    sizes = [3, 4, 2, 6, 1, 1]
    batches = size_batches(sizes, lambda n: n, limit=7)
    assert batches == [[3, 4], [2], [6, 1], [1]]
    assert [x for b in batches for x in b] == sizes


def test_an_item_over_the_limit_is_a_batch_of_its_own():
    assert size_batches([1, 50, 2], lambda n: n, limit=10) == [[1], [50], [2]]


def test_max_items_caps_a_batch_of_small_items():
    items = [("a", 0), ("b", 0), ("c", 0), ("d", 1)]
    batches = size_batches(items, lambda i: i[1], limit=100, max_items=2)
    assert batches == [[("a", 0), ("b", 0)], [("c", 0), ("d", 1)]]


def test_no_items_no_batch():
    assert size_batches([], lambda n: n, limit=1) == []
