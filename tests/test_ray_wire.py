"""The wire format between the Ray ingress and engine replicas, without Ray: a job with images and
every engine event survive the round trip (pickled, as Ray's handles do)."""

from __future__ import annotations

import pickle

from PIL import Image

from canvasd.contracts import Cancelled, Job
from canvasd.engine.events import JobFailed, JobFinished, JobTimeout, OutOfDeviceMemory, PartialImage
from canvasd.serve.wire import WireJob, event_message, message_event


def rgba(colour) -> Image.Image:
    return Image.new("RGBA", (9, 7), colour)


def test_job_with_images_round_trips():
    mask = Image.new("L", (9, 7), 0)
    mask.paste(255, (0, 0, 4, 7))
    job = Job(kind="edit", model="m", prompt="a hat", n=2, width=9, height=7, steps=5, seed=42,
              strength=0.6, init_images=[rgba((1, 2, 3, 4)), rgba((5, 6, 7, 8))], mask=mask,
              transparent=True, partial_images=2)
    job.cancel()
    back = pickle.loads(pickle.dumps(WireJob.of(job))).job()
    assert back.id == job.id and back.prompt == "a hat" and back.strength == 0.6 and back.seed == 42
    assert [im.tobytes() for im in back.init_images] == [im.tobytes() for im in job.init_images]
    assert back.init_images[0].mode == "RGBA" and back.mask.mode == "L"
    assert back.mask.tobytes() == mask.tobytes()
    assert not back.cancelled  # the replica's copy has its own cancel flag


def test_events_round_trip():
    image = rgba((10, 20, 30, 40))
    for event in (PartialImage(image_index=1, partial_index=0, image=image),
                  JobFinished(images=[image, image], prompt_tokens=3, timings={"engine_s": 0.5})):
        back = message_event(pickle.loads(pickle.dumps(event_message(event))))
        assert type(back) is type(event)
        if isinstance(back, PartialImage):
            assert (back.image_index, back.partial_index) == (1, 0) and back.image.tobytes() == image.tobytes()
        else:
            assert back.prompt_tokens == 3 and back.timings == {"engine_s": 0.5} and len(back.images) == 2


def test_failures_keep_their_kind():
    for error, cls in ((JobTimeout("slow"), JobTimeout), (Cancelled("job_1"), Cancelled),
                       (OutOfDeviceMemory("too big"), OutOfDeviceMemory), (ValueError("bad"), RuntimeError)):
        back = message_event(event_message(JobFailed(error)))
        assert isinstance(back, JobFailed) and type(back.error) is cls
        assert str(error) in str(back.error)
