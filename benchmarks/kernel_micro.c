/* Single-core cost of the CPU kernel in ns per element, on a 256 KB tensor (L2-resident): the flat path,
 * the planes path (NCHW), ReLU, and the square root and division each cone needs, alone,
 * so that the number reflects the kernel's compute and not the memory or the machine's load.
 * Built by benchmarks/kernel_micro.sh, which includes the kernel source given to it. */
#include KFILE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
#define NC (4096)
int main(void){
  float *x = aligned_alloc(64, NC*16*4), *y = aligned_alloc(64, NC*16*4);
  for (int i=0;i<NC*16;++i) x[i] = (float)((i*2654435761u)%1000)/500.0f-1.0f;
  colu_cfg c = {0}; c.eps=1e-7;
  for (int kind=0; kind<2; ++kind) for (int sc=0; sc<2; ++sc) for (int Si=0; Si<3; ++Si) {
    int S = Si==0?4:(Si==1?8:16);
    c.G=1; c.S=S; c.kind=kind; c.scaling=sc; c.axis_step=S; c.sec_base=1; c.sec_step=S;
    i64 n = NC*16/S; /* cones so that n*S = 64K floats */
    double best=1e30;
    for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it) flat_fwd_range_f32(x,y,n,&c,1); t=(now()-t)/20; if(t<best)best=t;}
    double bestb=1e30;
    for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it) flat_bwd_range_f32(x,x,y,n,&c,1); t=(now()-t)/20; if(t<bestb)bestb=t;}
    printf("%s S=%2d %s: fwd %.3f ns/elem  bwd %.3f ns/elem\n", kind?"rcolu":"colu ", S, sc?"soft":"hard", best/(n*S), bestb/(n*S));
  }
  /* the planes path (NCHW, dim=1): one (1, 16, 4096) image, grouped cones, one pixel per vector lane */
  for (int sc=0; sc<2; ++sc) for (int Si=0; Si<2; ++Si) {
    int S = Si==0?4:8;
    c.G=16/S; c.S=S; c.kind=0; c.scaling=sc; c.axis_step=S; c.sec_base=1; c.sec_step=S;
    double best=1e30, bestb=1e30;
    for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it) plane_fwd_range_f32(x,y,1,16,NC,&c,1); t=(now()-t)/20; if(t<best)best=t;}
    for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it) plane_bwd_range_f32(x,x,y,1,16,NC,&c,1); t=(now()-t)/20; if(t<bestb)bestb=t;}
    printf("planes colu S=%d %s: fwd %.3f ns/elem  bwd %.3f ns/elem\n", S, sc?"soft":"hard", best/(NC*16), bestb/(NC*16));
  }
  /* relu-like baseline */
  double best=1e30;
  for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it){ for (i64 i=0;i<NC*16;++i) y[i]= x[i]<0?0:x[i]; __asm__ volatile(""::"r"(y):"memory");} t=(now()-t)/20; if(t<best)best=t;}
  printf("relu loop: %.3f ns/elem\n", best/(NC*16));
  /* the floor of any exact cone kernel: each S=4 cone's one square root and one division, nothing else */
  best=1e30;
  for (int r=0;r<30;++r){ double t=now(); for(int it=0;it<20;++it){ for (i64 i=0;i<NC*4;++i) y[i]= x[i]/(sqrtf(x[NC*4+i]*x[NC*4+i])+1e-7f); __asm__ volatile(""::"r"(y):"memory");} t=(now()-t)/20; if(t<best)best=t;}
  printf("sqrt+div per S=4 cone alone: %.3f ns/elem\n", best/(NC*16));
  return 0;
}
