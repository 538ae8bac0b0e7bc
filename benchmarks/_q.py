import common, numpy as np, torch
import bench_reference as br
from torch.nn import functional as TF
from minclip import backend, functional as F
from minclip.model import CLIP
from minclip.loss import clip_loss
from minclip.tensor import Tensor
config = br.config_of("rn tower step")
backend.seed(0); m = CLIP(config)
t64 = br.open_clip_from_minclip(m).double(); t32 = br.open_clip_from_minclip(m)
images, text = br.tower_batch(config, 64)
scale = float(np.exp(np.asarray(m.logit_scale.data)))
for t,dt in ((t64,torch.float64),(t32,torch.float32)):
    l = br.torch_clip_loss(TF.normalize(t(torch.from_numpy(images).to(dt)), dim=-1), torch.from_numpy(text).to(dt), scale); l.backward()
g64=dict(t64.named_parameters()); g32=dict(t32.named_parameters())
for dtype in ("float32", "float64"):
    backend.seed(0); mm = CLIP(config)
    if dtype=="float64": mm.to(dtype="float64")
    v = mm.visual
    loss = clip_loss(F.normalize(v(Tensor(images.astype(dtype))), axis=-1), Tensor(text.astype(dtype)), Tensor(np.array(scale, dtype=dtype)))
    loss.backward(); print(dtype, loss.item())
    res=[]
    for n,p in v.named_parameters():
        a=np.asarray(p.grad, dtype=np.float64); c=g64[n].grad.numpy()
        res.append((np.abs(a-c).max()/max(np.abs(c).max(),1e-12), n, np.abs(c).max(), np.abs(g32[n].grad.numpy()-c).max()/max(np.abs(c).max(),1e-12)))
    for r in sorted(res)[-4:]: print(r)
