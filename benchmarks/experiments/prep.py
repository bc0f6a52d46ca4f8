import sys, torch, time
sys.path.insert(0, '/work/main'); sys.path.insert(0, '/work/main/benchmarks')
from _common import fmnist_teacher, correct_subset
from whitebox import min_norm_targeted, all_target_pairs, PixelSpace
from db3_timm.data import load_image_dataset
torch.set_num_threads(2)
teacher, acc = fmnist_teacher(cache_dir='benchmarks/experiments/teacher', epochs=4)
test = load_image_dataset("fashion-mnist", "test")
x, y = correct_subset(teacher, test.images, test.labels, 20, seed=0)
xp, tp, idx = all_target_pairs(x, y, 10)
t0=time.time()
d = min_norm_targeted(PixelSpace(teacher), xp, tp, fmn_steps=300, cw_steps=200, cw_binary_steps=6)
print('wb time', time.time()-t0, d.median())
train = load_image_dataset("fashion-mnist", "train")
torch.save(dict(x=x, y=y, tp=tp, wb=d, refs=train.images[:2000], reflab=train.labels[:2000]), 'benchmarks/experiments/ref.pt')
