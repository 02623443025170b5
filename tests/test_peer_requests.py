"""How the benchmark's clients send images to the peer frameworks (bench/peer_runs.py)."""

from bench.peer_runs import peer_request
from bench.peer_serving import pack_images, unpack_images

IMAGES = [("a.jpg", b"\xff\xd8first"), ("b.jpg", b""), ("c.jpg", b"\xff\xd8third one")]


def test_packed_images_unpack_to_the_same_files_in_order_empty_ones_too():
    assert unpack_images(pack_images([data for _, data in IMAGES])) == [d for _, d in IMAGES]


def test_one_image_goes_as_the_raw_body_and_several_packed_to_the_batch_route():
    one = peer_request("http://peer", IMAGES[:1], form=False)
    assert one == {"url": "http://peer/classify", "data": IMAGES[0][1]}
    several = peer_request("http://peer", IMAGES, form=False)
    assert several["url"] == "http://peer/classify/batch"
    assert unpack_images(several["data"]) == [data for _, data in IMAGES]


def test_a_form_peer_gets_every_image_as_a_file_of_one_field_at_one_route():
    for images in (IMAGES[:1], IMAGES):
        request = peer_request("http://peer", images, form=True)
        assert request["url"] == "http://peer/classify"
        assert [(field, file[0], file[1]) for field, file in request["files"]] == [
            ("images", name, data) for name, data in images
        ]
