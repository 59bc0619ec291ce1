//! ResNet-50 parameter shapes: the gradient set the engine benchmark submits.

/// Every trainable parameter of torchvision's ResNet-50 (ImageNet, 1000 classes), in the model's
/// definition order (the order `model.named_parameters()` yields): (name, shape).
pub fn resnet50_parameters() -> Vec<(String, Vec<usize>)> {
    let mut params = Vec::new();
    let mut conv_bn = |conv: &str, bn: &str, out: usize, inp: usize, k: usize| {
        params.push((format!("{conv}.weight"), vec![out, inp, k, k]));
        params.push((format!("{bn}.weight"), vec![out]));
        params.push((format!("{bn}.bias"), vec![out]));
    };
    conv_bn("conv1", "bn1", 64, 3, 7);
    let mut inplanes = 64;
    for (layer, (planes, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].into_iter().enumerate() {
        for block in 0..blocks {
            let p = format!("layer{}.{block}", layer + 1);
            conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), planes, inplanes, 1);
            conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), planes, planes, 3);
            conv_bn(&format!("{p}.conv3"), &format!("{p}.bn3"), planes * 4, planes, 1);
            if block == 0 {
                conv_bn(&format!("{p}.downsample.0"), &format!("{p}.downsample.1"), planes * 4, inplanes, 1);
            }
            inplanes = planes * 4;
        }
    }
    params.push(("fc.weight".to_string(), vec![1000, 2048]));
    params.push(("fc.bias".to_string(), vec![1000]));
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_torchvision_resnet50() {
        let params = resnet50_parameters();
        assert_eq!(params.len(), 161);
        assert_eq!(params.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 25_557_032);
    }
}
