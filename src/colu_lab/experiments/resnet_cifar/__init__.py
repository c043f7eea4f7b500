"""resnet-cifar (Sec. 5.4, Tables 4, 6): ``experiment.py`` the contract, ``model.py`` the CIFAR ResNet."""
